"""One trial: suggest hyperparameters, build and train a BN-MLP, score it on the validation split.

The objective is given :class:`tuner.data.TrainingData`, which holds no test rows.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import upload_artifact

from tuner import interrupt, schema
from tuner.data import TrainingData
from tuner.errors import ArtifactStoreError
from tuner.metrics import metric_value, true_class_log_probability
from tuner.nn import (
    MLP,
    DivergedError,
    activation_statistics,
    fit,
    make_optimizer,
    train_epochs,
)
from tuner.plots import draw_activation_histograms, draw_learning_curves
from tuner.search import suggest
from tuner.spec import StudySpec

#: Bins of the activation histograms at initialization.
HISTOGRAM_BINS = 50
#: At most this many training rows (a seeded sample) feed the activation histograms: enough
#: for the picture, and a large training split does not slow every trial.
HISTOGRAM_ROWS = 4096


def trial_seeds(seed: int, trial_number: int) -> tuple[int, int]:
    """Seeds of a trial's weight initialization and mini-batch shuffle, from the study seed."""
    init_seed, shuffle_seed = np.random.SeedSequence([seed, trial_number]).generate_state(2)
    return int(init_seed), int(shuffle_seed)


def build_model(spec: StudySpec, hp: dict, n_features: int, n_classes: int, seed: int) -> MLP:
    """The BN-MLP a trial trains, from the spec's model section and suggested values.

    Weight decay is the loss's L2 term, except under AdamW, which decouples it (see
    :func:`build_optimizer`).
    """
    return MLP(
        n_features,
        hp["widths"],
        n_classes,
        activation=hp["activation"],
        initializer=hp["initializer"],
        batchnorm=spec.model["batchnorm"],
        dropout=hp["dropout"],
        weight_decay=0.0 if hp["optimizer"] == "adamw" else hp["weight_decay"],
        seed=seed,
    )


def build_optimizer(hp: dict, model: MLP):
    """The optimizer a trial uses, with the options that belong to it."""
    name, lr = hp["optimizer"], hp["learning_rate"]
    if name in ("momentum", "nesterov"):
        return make_optimizer(name, lr, momentum=hp["momentum"])
    if name == "adamw":
        return make_optimizer(
            name,
            lr,
            weight_decay=hp["weight_decay"],
            decay_keys=model.weight_keys,
            beta1=hp["beta1"],
            beta2=hp["beta2"],
        )
    if name == "adam":
        return make_optimizer(name, lr, beta1=hp["beta1"], beta2=hp["beta2"])
    return make_optimizer(name, lr)


def fold_seed(shuffle_seed: int, fold: int) -> int:
    """The mini-batch shuffle seed of fold ``fold``'s model in a cross-validated trial."""
    return int(np.random.SeedSequence([shuffle_seed, fold]).generate_state(1)[0])


def histogram_rows(X: np.ndarray, seed: int) -> np.ndarray:
    """The rows of ``X`` ``(n, features)`` that feed the activation histograms: all of them, or
    a seeded sample of :data:`HISTOGRAM_ROWS` (in their original order) if there are more."""
    if X.shape[0] <= HISTOGRAM_ROWS:
        return X
    rows = np.random.default_rng(seed).choice(X.shape[0], HISTOGRAM_ROWS, replace=False)
    return X[np.sort(rows)]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Objective:
    """Callable for ``study.optimize``: returns the final validation value of the study's
    metric (``study.metric``, :func:`tuner.metrics.metric_value`) of one trial.

    Every epoch that validation value is reported as the trial's intermediate value, and
    the pruner may stop the trial (asked only at the epochs where it can prune,
    :func:`tuner.samplers.pruning_epochs`). A trial whose loss turns NaN or infinite is pruned
    with the reason recorded (:func:`tuner.schema.set_diverged`). Every finished trial (complete or
    pruned) records its per-epoch training loss and validation value
    (:func:`tuner.schema.set_learning_curves`) and, unless it diverged, the validation
    predictions of its last epoch for the forecast (:mod:`tuner.forecast`); every complete trial also uploads two PNG
    artifacts for the dashboard: its learning curve and its activation histograms at
    initialization (on the training split, before the first step). A trial whose value is at
    least the study's best so far saves its model (npz) to the artifact store, with its
    SHA-256 (:func:`tuner.schema.set_weights`), so that the locked test evaluation uses exactly the
    weights that were scored on validation.

    With ``data.folds = K`` (:meth:`tuner.data.TrainingData.folds`) a trial trains K models in
    lock-step, each on the other folds' rows; its value each epoch is the mean of the K fold
    values of the metric, so the pruner sees a score per epoch as for one split. Its stored
    predictions are then out-of-fold, one for every non-test row, and the model it saves is
    a refit on every non-test row (:meth:`_refit`), fixed before the test split can be opened.
    """

    def __init__(
        self,
        spec: StudySpec,
        data: TrainingData,
        artifact_store,
        *,
        seed: int,
        pruning_epochs: Callable[[int], bool] = lambda epoch: True,
    ) -> None:
        self.spec, self.data, self.artifact_store, self.seed = spec, data, artifact_store, seed
        #: Whether to ask the pruner at an epoch (:func:`tuner.samplers.pruning_epochs`).
        self.pruning_epochs = pruning_epochs

    def __call__(self, trial: optuna.Trial) -> float:
        hp = suggest(trial, self.spec.search)
        init_seed, shuffle_seed = trial_seeds(self.seed, trial.number)
        d = self.data
        folds = d.folds()
        n_classes = len(d.classes)
        # One model per fold (one for a single split), trained in lock-step, each from the
        # trial's initial weights with its own mini-batch order.
        models = [build_model(self.spec, hp, d.n_features, n_classes, init_seed) for _ in folds]
        epochs = [
            train_epochs(
                model,
                X,
                y,
                epochs=hp["epochs"],
                batch_size=hp["batch_size"],
                optimizer=build_optimizer(hp, model),
                seed=shuffle_seed if len(folds) == 1 else fold_seed(shuffle_seed, k),
            )
            for k, (model, (X, y, _rows)) in enumerate(zip(models, folds, strict=True))
        ]
        losses: list[float] = []
        scores: list[float] = []
        # The latest epoch's validation logits (out of fold with folds), once ``scores`` has one.
        logits = np.empty((d.y_validation.size, n_classes), np.float32)
        metric = self.spec.metric

        def on_epoch(epoch: int, train_loss: float) -> None:
            # A signal waits for the database writes; overflow in a nearly diverged network's
            # scores is ignored, as in its training (tuner.nn.fit).
            with interrupt.deferred(), np.errstate(over="ignore", invalid="ignore"):
                losses.append(train_loss)
                fold_scores = []
                for model, (_X, _y, rows) in zip(models, folds, strict=True):
                    logits[rows] = model.forward(d.X_validation[rows], train=False)
                    y_rows = d.y_validation[rows]
                    fold_scores.append(metric_value(metric, logits[rows], y_rows, n_classes))
                scores.append(float(np.mean(fold_scores)))
                trial.report(scores[-1], epoch)
                if self.pruning_epochs(epoch) and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            with interrupt.interruptible():  # SIGINT or SIGTERM fail the trial mid-epoch
                for epoch in range(1, hp["epochs"] + 1):
                    on_epoch(epoch, float(np.mean([next(e) for e in epochs])))
                with interrupt.deferred():
                    best = self._is_best_so_far(trial.study, scores[-1])
                final = models[0]  # the model finalize would evaluate
                if best and len(folds) > 1:
                    final = self._refit(hp, init_seed, shuffle_seed)
        except DivergedError as e:
            schema.set_diverged(trial, str(e))
            self._record_learning(trial, hp, losses, scores, None)  # no predictions of NaN weights
            raise optuna.TrialPruned(str(e)) from None
        except optuna.TrialPruned:
            self._record_learning(trial, hp, losses, scores, logits if scores else None)
            raise
        self._record_learning(trial, hp, losses, scores, logits, plots=True)
        if best:
            self._save_weights(trial, final)
        return scores[-1]

    def _refit(self, hp: dict, init_seed: int, shuffle_seed: int) -> MLP:
        """With ``data.folds``: the network finalize evaluates, trained on every non-test row
        for the trial's epochs from the trial's initial weights. Refit, not the K fold models
        averaged: finalize then evaluates one network, as for a single split, trained on all
        the rows the folds saw (a quarter more than each fold model with K = 5); its cost is
        one more training, and it is trained only here, for a complete trial, before the test
        split can be opened (its weights are saved with their SHA-256 like any trial's).

        Raises:
            DivergedError: the refit diverged (the trial is then pruned as diverged).
        """
        d = self.data
        model = build_model(self.spec, hp, d.n_features, len(d.classes), init_seed)
        fit(
            model,
            d.X_train,
            d.y_train,
            epochs=hp["epochs"],
            batch_size=hp["batch_size"],
            optimizer=build_optimizer(hp, model),
            seed=shuffle_seed,
        )
        return model

    def _record_learning(
        self,
        trial: optuna.Trial,
        hp: dict,
        losses: list[float],
        scores: list[float],
        logits: np.ndarray | None,
        *,
        plots: bool = False,
    ) -> None:
        """Per-epoch user attributes, the validation predictions of the last epoch (from its
        validation ``logits`` ``(n_validation, n_classes)``, unless None;
        :func:`tuner.schema.set_validation_predictions`, with the true-class
        log-probabilities when the metric is ``log_loss``) and, for a complete trial (``plots``,
        unless ``study.trial_plots = false``), the two PNG artifacts.

        Pruned trials get no PNGs: they cannot be the best trial, and drawing took a third of
        the default study's time (benchmarks/bench_study.py). The activation histograms are
        computed here, on a fresh model with the trial's initialization seed (the very weights
        the trial started from), so that trials without PNGs do not pay for them.
        """
        # Drawn once per trial, when it finishes: per-epoch drawing would dominate a trial's time.
        schema.set_learning_curves(trial, losses, scores, self.spec.metric)
        d = self.data
        if logits is not None:
            log_p = (
                true_class_log_probability(logits, d.y_validation)
                if self.spec.metric == "log_loss"
                else None
            )
            schema.set_validation_predictions(trial, logits.argmax(axis=1), len(d.classes), log_p)
        if not (plots and self.spec.resolved["study"]["trial_plots"]):
            return
        init_seed, _ = trial_seeds(self.seed, trial.number)
        fresh = build_model(self.spec, hp, d.n_features, len(d.classes), init_seed)
        init_stats = activation_statistics(
            fresh, histogram_rows(d.X_train, init_seed), bins=HISTOGRAM_BINS
        )
        n = trial.number
        with tempfile.TemporaryDirectory() as tmp:
            curve = draw_learning_curves(
                {f"trial {n}": (losses, scores)},
                Path(tmp) / f"trial-{n}-learning-curve.png",
                title=f"trial {n}: learning curve",
                metric=self.spec.metric,
            )
            histograms = draw_activation_histograms(
                {str(hp["initializer"]): init_stats},
                Path(tmp) / f"trial-{n}-activations-at-init.png",
                title=f"trial {n}: activations at initialization ({hp['activation']}, "
                f"{'BatchNorm' if self.spec.model['batchnorm'] else 'no BatchNorm'})",
            )
            for path in (curve, histograms):
                self._upload(trial, path, "plots", mimetype="image/png")

    def _is_best_so_far(self, study: optuna.Study, value: float) -> bool:
        try:
            best = study.best_value
        except ValueError:  # no completed trial yet
            return True
        return value >= best if self.spec.direction == "maximize" else value <= best

    def _save_weights(self, trial: optuna.Trial, model: MLP) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}-weights.npz"
            model.save(path)
            digest = sha256_file(path)
            artifact_id = self._upload(trial, path, "weights")
        schema.set_weights(trial, artifact_id, digest)

    def _upload(self, trial: optuna.Trial, path: Path, what: str, **options) -> str:
        """Upload ``path`` as an artifact of ``trial`` and return its id.

        Raises:
            ArtifactStoreError: the store cannot be written (full, read-only); the reason is
                recorded on the trial (:func:`tuner.schema.set_fail_reason`), which then fails.
        """
        try:
            return upload_artifact(
                artifact_store=self.artifact_store,
                file_path=str(path),
                study_or_trial=trial,
                **options,
            )
        except OSError as e:
            folder = getattr(self.artifact_store, "_base_path", "the artifact folder")
            reason = (
                f"cannot save trial {trial.number}'s {what} in {str(folder)!r}: {e.strerror or e}"
            )
            schema.set_fail_reason(trial, reason)
            raise ArtifactStoreError(
                f"{reason}; trial {trial.number} failed, the finished trials are kept; free "
                "space or make the folder writable (or pass another --artifact-dir), then run "
                "the same command again to resume"
            ) from None
