"""The forecast of a study's test score, made before the test split is opened.

The best validation score of a study is optimistic: it is the maximum over many trials
scored on the same noisy validation rows (the winner's curse). The bootstrap bias correction
of Tsamardinos, Greasidou & Borboudakis (2018), "Bootstrapping the out-of-sample predictions
for efficient and accurate cross-validation", Machine Learning 107, section 3.2 (BBC-CV),
removes that optimism without training anything: the validation rows are resampled with
replacement; on each bootstrap sample the selection is repeated (the best trial by the
study's metric on the sampled rows), and the selected trial is scored on the rows the sample
left out. The mean of those out-of-bag scores is the forecast; their 2.5th and 97.5th
percentiles are its 95% interval (the percentile interval, section 3.2 of the paper).

That interval is for the selected trial's true score, and it is wide: each out-of-bag
score is taken on the third of the rows a sample leaves out. The test result it is held
against is a score on a finite test split, with sampling noise of its own (on wine's 36 test
rows one row is 2.8 points of accuracy). So when the number of test rows n_test is known (it
is recorded at creation; only the count, no test row is read) the interval is a 95%
prediction interval of the test score instead. Per bootstrap sample b, with s_b the selected
trial's score on the m_b rows the sample left out,

    q_b = forecast + (s_b - forecast) * sqrt(m_b / (N - m_b))

is a draw of its true score: the m_b rows are a subset of the N, so s_b spreads with
variance about sigma^2 (1/m_b - 1/N) for a per-row variance sigma^2, and the factor scales
that to sigma^2 / N, the spread of an estimate from all N rows. Then one test score on n_test
rows is drawn around q_b: for accuracy, k / n_test with k ~ Binomial(n_test, q'_b), where
q'_b = (q_b N + 1/2) / (N + 1) adds half a right and half a wrong row (Jeffreys' prior), so a
trial right on every validation row still allows a test error; for the other metrics,
q_b + (t_b - s_b), t_b the score on n_test rows drawn with replacement from the m_b. The
interval is the 2.5th to 97.5th percentile of those draws (for accuracy, test accuracies
themselves: multiples of 1 / n_test); the forecast stays the mean of the s_b. Checked by
simulation (tests/test_forecast.py): one trial of accuracy 0.9 on 100 or 1,000 validation
rows and 100 test rows is covered in about 95% of simulated studies.

The input is what every complete trial stores (:func:`tuner.schema.set_validation_predictions`)
and the study's validation labels (:func:`tuner.schema.set_validation_labels`); no data is
loaded and no test row is read.
"""

from __future__ import annotations

import numpy as np

from tuner import schema

#: Bootstrap samples of the validation rows.
N_BOOTSTRAP = 1000
#: At most this many (bootstrap sample, validation row) cells at a time: the samples are
#: drawn and scored in chunks, three float64/int64 arrays of this size (48 MiB) at most.
BOOTSTRAP_CELLS = 2**21
#: What ``forecast["method"]`` says: with the test split's size known, and without.
METHOD = "BBC-CV (Tsamardinos et al. 2018), 95% prediction interval of the score on the test rows"
METHOD_TRUE_SCORE = "BBC-CV (Tsamardinos et al. 2018), percentile 95% interval"


def weighted_metric(
    metric: str,
    predicted: np.ndarray,
    log_p_true: np.ndarray | None,
    y: np.ndarray,
    n_classes: int,
    weights: np.ndarray,
) -> np.ndarray:
    """The value of ``metric`` for every (trial, weighting) pair, ``(C, B)`` float64.

    Args:
        metric: a key of :data:`tuner.spec.METRICS`.
        predicted: ``(C, N)`` int, the predicted class of each of N rows by each of C trials.
        log_p_true: ``(C, N)`` float, the log-probability of each row's true class (nats);
            needed by ``log_loss`` only, else may be None.
        y: ``(N,)`` int, the true classes.
        n_classes: the number of classes.
        weights: ``(B, N)`` non-negative row weights, one weighting per row of it: bootstrap
            counts, 0/1 out-of-bag indicators, or ones for the plain metric. Each weighting
            must give some row a positive weight.

    With integer weights the value is the metric of the rows repeated by their weights:
    accuracy and log loss as :func:`tuner.metrics.classification_metrics` gives them; balanced
    accuracy, the mean recall over the classes with true rows there (as there too); macro-F1,
    the mean F1 over the classes true or predicted there (scikit-learn's ``f1_score(average=
    "macro")`` with its default labels). ``classification_metrics`` averages macro-F1 over all
    ``n_classes`` instead; the two agree when every class is true or predicted, as on a
    stratified split, but a bootstrap sample of a small split often leaves a class out, which
    would count as an F1 of 0 (a perfect trial on 6 rows of 3 classes would forecast 0.59).

    Raises:
        ValueError: ``log_loss`` without ``log_p_true``, or an unknown metric.
    """
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum(axis=1)  # (B,)
    if metric == "accuracy":
        return (predicted == y).astype(np.float64) @ weights.T / total
    if metric == "log_loss":
        if log_p_true is None:
            raise ValueError("log_loss needs the true-class log-probabilities")
        return -np.asarray(log_p_true, dtype=np.float64) @ weights.T / total
    if metric not in ("balanced_accuracy", "macro_f1"):
        raise ValueError(f"unknown metric {metric!r}")
    C, B = predicted.shape[0], weights.shape[0]
    out = np.zeros((C, B))
    n_present = np.zeros((C, B))  # classes counted in each (trial, weighting)'s mean
    for k in range(n_classes):
        is_k = y == k
        true_k = weights[:, is_k].sum(axis=1)  # (B,) weight of the rows of class k
        hit_k = (predicted[:, is_k] == k).astype(np.float64) @ weights[:, is_k].T  # (C, B) TP
        if metric == "balanced_accuracy":
            present = np.broadcast_to(true_k > 0, (C, B))
            out += np.divide(hit_k, true_k, out=np.zeros_like(hit_k), where=present)
        else:
            denom = (predicted == k).astype(np.float64) @ weights.T + true_k  # TP+FP + TP+FN
            present = denom > 0  # true or predicted in these rows
            out += np.divide(2 * hit_k, denom, out=np.zeros_like(hit_k), where=present)
        n_present += present
    return out / n_present


def bbc_forecast(
    metric: str,
    direction: str,
    predicted: np.ndarray,
    log_p_true: np.ndarray | None,
    y: np.ndarray,
    n_classes: int,
    *,
    seed: int,
    n_test: int | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
) -> dict:
    """BBC-CV (module docstring) over C trials' predictions of N validation rows.

    Args:
        metric, predicted, log_p_true, y, n_classes: as :func:`weighted_metric`.
        direction: ``"maximize"`` or ``"minimize"`` (the study's, for ``log_loss``).
        seed: seeds the bootstrap samples; the same trials and seed give the same forecast.
        n_test: the number of test rows: the interval is then a prediction interval of the
            score on that many rows (module docstring); None: of the true score.
        n_bootstrap: the number of bootstrap samples; memory is bounded by
            :data:`BOOTSTRAP_CELLS`, time is about ``n_bootstrap * N * C`` multiply-adds
            (times ``2 n_classes`` for balanced accuracy and macro-F1).

    Returns:
        ``value`` (mean out-of-bag score of the trial selected on each bootstrap sample),
        ``ci95`` ([2.5th, 97.5th] percentile of those scores, or with ``n_test`` of the
        prediction interval's draws; widened to hold ``value``), ``method``,
        ``n_trials`` (C), ``n_validation_rows`` (N), ``n_test_rows`` (``n_test``) and
        ``n_bootstrap``. Ties are selected as Optuna's ``best_trial`` selects them: the first
        of the tied trials, in the order given.
    """
    n = y.size
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2018]))
    # Its own stream, so that the forecast's value does not depend on n_test.
    test_rng = np.random.default_rng(np.random.SeedSequence([seed, 2018, 1]))
    per_chunk = max(1, BOOTSTRAP_CELLS // n)
    chunks, left_out, noise = [], [], []  # s_b, m_b and (t_b - s_b) of each sample
    for start in range(0, n_bootstrap, per_chunk):
        b = min(per_chunk, n_bootstrap - start)
        rows = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        counts = np.bincount(rows.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        out_of_bag = (counts == 0).astype(np.float64)
        keep = out_of_bag.any(axis=1)  # a sample that drew every row leaves nothing to score
        counts, out_of_bag = counts[keep], out_of_bag[keep]
        in_bag = weighted_metric(metric, predicted, log_p_true, y, n_classes, counts)
        chosen = in_bag.argmax(axis=0) if direction == "maximize" else in_bag.argmin(axis=0)
        oob = weighted_metric(metric, predicted, log_p_true, y, n_classes, out_of_bag)
        chunks.append(oob[chosen, np.arange(chosen.size)])
        left_out.append(out_of_bag.sum(axis=1))
        if n_test is not None and metric != "accuracy":  # n_test rows from those left out
            drawn = test_rng.multinomial(n_test, out_of_bag / left_out[-1][:, None])
            on_test = weighted_metric(metric, predicted, log_p_true, y, n_classes, drawn)
            noise.append(on_test[chosen, np.arange(chosen.size)] - chunks[-1])
    scores = np.concatenate(chunks)
    value = float(scores.mean())
    draws = scores
    if n_test is not None:  # the prediction interval's draws (module docstring)
        m = np.concatenate(left_out)
        q = value + (scores - value) * np.sqrt(m / (n - m))
        if metric == "accuracy":
            q = np.clip((q * n + 0.5) / (n + 1), 0.0, 1.0)
            draws = test_rng.binomial(n_test, q) / n_test
        else:  # within the metric's range: [0, 1], or [0, inf) for log loss
            draws = np.clip(q + np.concatenate(noise), 0.0, None if metric == "log_loss" else 1.0)
    # When nearly every sample scores the same (1.0, say), the mean of the rest lies outside
    # their percentiles: the interval is widened to hold it.
    # Bounds are draws themselves (for accuracy, attainable test accuracies).
    low = np.percentile(draws, 2.5, method="lower")
    high = np.percentile(draws, 97.5, method="higher")
    low, high = min(float(low), value), max(float(high), value)
    return {
        "value": value,
        "ci95": [low, high],
        "method": METHOD if n_test is not None else METHOD_TRUE_SCORE,
        "n_trials": int(predicted.shape[0]),
        "n_validation_rows": int(n),
        "n_test_rows": n_test,
        "n_bootstrap": int(scores.size),
    }


def study_forecast(study) -> dict:
    """The forecast of the test score of ``study``'s best trial, by the study's metric, from
    its complete trials' stored validation predictions (:func:`bbc_forecast`).

    Returns:
        The forecast, or ``{"value": None, "reason": ...}`` when there is nothing to forecast
        from: no complete trial, no recorded validation labels, or a complete trial without
        stored predictions (of an earlier tuner, or added by hand). The bootstrap is seeded with the
        spec's ``study.seed``, so the same trials give the same forecast.
    """
    labels = schema.validation_labels(study)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not trials:
        return {"value": None, "reason": "no complete trial yet"}
    if labels is None:
        return {"value": None, "reason": "the study has no recorded validation labels"}
    stored = [schema.validation_predictions(t) for t in trials]
    missing = sum(s is None for s in stored)
    if missing:
        return {
            "value": None,
            "reason": f"{missing} of {len(trials)} complete trials {'has' if missing == 1 else 'have'} "
            "no stored validation predictions (trials of an earlier tuner, or added by hand)",
        }
    y, n_classes = labels
    metric = schema.study_metric(study)
    seed = int((schema.recorded_spec(study) or {}).get("study", {}).get("seed", 0))
    predicted = np.stack([p for p, _ in stored])  # type: ignore[misc]
    log_p = np.stack([lp for _, lp in stored]) if metric == "log_loss" else None  # type: ignore[misc]
    return bbc_forecast(
        metric,
        study.direction.name.lower(),
        predicted,
        log_p,
        y,
        n_classes,
        seed=seed,
        n_test=schema.test_size(study),
    )


def describe_forecast(forecast: dict | None) -> str:
    """One line: ``0.9650 (95% interval 0.9401-0.9861; BBC-CV over 15 complete trials)``, or
    why there is no forecast."""
    if forecast is None:
        return "none (the study was finalized by an earlier tuner)"
    if forecast["value"] is None:
        return f"none ({forecast['reason']})"
    low, high = forecast["ci95"]
    return (
        f"{forecast['value']:.4f} (95% interval {low:.4f}-{high:.4f}; BBC-CV over "
        f"{forecast['n_trials']} complete trials)"
    )
