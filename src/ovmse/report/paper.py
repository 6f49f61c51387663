"""The paper's own numbers (OVMSE, AAMAS 2025) and its order of tasks and algorithms.

Table 1: final median win rate over seeds, each seed tested on 640 battles after online
fine-tuning; 2s3z is left out of the paper's table (every algorithm wins nearly always).
Table 2: OVMSE on 2s3z medium, mean test return at 200k env steps by mixing ratio (the
fraction of each online batch drawn from the offline dataset).
"""

from __future__ import annotations

TASK_ORDER = ("6h_vs_8z_medium_replay", "6h_vs_8z_medium", "5m_vs_6m_medium", "5m_vs_6m_medium_replay",
              "3s5z_medium", "3s5z_medium_replay", "2s3z_medium", "2s3z_medium_replay")
BASELINES = ("switch_cql", "macalql", "macql", "qmix")
TABLE1_ALGOS = ("ovmse",) + BASELINES
# Table 1's columns, then the ablations of the paper's Figure 4.
ALGO_ORDER = TABLE1_ALGOS + ("ovm_only", "se_only")
ALGO_LABELS = {"ovmse": "OVMSE", "switch_cql": "Switch-CQL", "macalql": "MACal-QL", "macql": "MACQL",
               "qmix": "QMIX", "ovm_only": "OVM only", "se_only": "SE only"}

TABLE1 = {
    "6h_vs_8z_medium_replay": {"ovmse": 0.71250, "switch_cql": 0.50859, "macalql": 0.11641,
                               "macql": 0.12969, "qmix": 0.32031},
    "6h_vs_8z_medium": {"ovmse": 0.60078, "switch_cql": 0.53359, "macalql": 0.37187,
                        "macql": 0.34141, "qmix": 0.32031},
    "5m_vs_6m_medium": {"ovmse": 0.69531, "switch_cql": 0.63203, "macalql": 0.24688,
                        "macql": 0.24453, "qmix": 0.64063},
    "5m_vs_6m_medium_replay": {"ovmse": 0.69297, "switch_cql": 0.71484, "macalql": 0.21641,
                               "macql": 0.20234, "qmix": 0.64063},
    "3s5z_medium": {"ovmse": 0.86719, "switch_cql": 0.74766, "macalql": 0.12969,
                    "macql": 0.17188, "qmix": 0.53359},
    "3s5z_medium_replay": {"ovmse": 0.80625, "switch_cql": 0.74687, "macalql": 0.11797,
                           "macql": 0.04100, "qmix": 0.53359},
}
TABLE2_TASK = "2s3z_medium"
TABLE2_STEP = 200_000
TABLE2 = {0.0: 19.58, 0.1: 19.64, 0.3: 18.41}


def task_sort_key(task: str) -> tuple[int, str]:
    """Paper order first, then any other task alphabetically."""
    return (TASK_ORDER.index(task), "") if task in TASK_ORDER else (len(TASK_ORDER), task)


def algo_sort_key(algo: str) -> tuple[int, str]:
    """Table 1's column order, then the ablations, then any other algorithm alphabetically."""
    return (ALGO_ORDER.index(algo), "") if algo in ALGO_ORDER else (len(ALGO_ORDER), algo)


def label(algo: str) -> str:
    return ALGO_LABELS.get(algo, algo)
