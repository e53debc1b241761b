"""tuner: hyperparameter tuning of NumPy BN-MLPs with Optuna and a locked test evaluation."""

__version__ = "0.1.0"
