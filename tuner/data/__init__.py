"""Dataset sources, the stratified split, preprocessing and fingerprints. No Optuna here."""

from tuner.data.dataset import HoldoutData, TrainingData, load_holdout_data, load_training_data
from tuner.data.fingerprint import fingerprint
from tuner.data.preprocessing import Preprocessor
from tuner.data.sources import Dataset, load_source
from tuner.data.split import Split, stratified_split

__all__ = [
    "Dataset",
    "HoldoutData",
    "Preprocessor",
    "Split",
    "TrainingData",
    "fingerprint",
    "load_holdout_data",
    "load_source",
    "load_training_data",
    "stratified_split",
]
