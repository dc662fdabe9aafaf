"""Many products in one estimator: one fitted clone per product, routed by
the product named at predict time or, when none is named, by the nearest
product."""

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.utils.validation import check_is_fitted

from .images import check_images

__all__ = ["GroupedDetector"]


class GroupedDetector(MetaEstimatorMixin, BaseEstimator):
    """One anomaly detector per product (group), behind one estimator.

    ``fit(X, groups=...)`` fits a clone of ``estimator`` on each product's
    normal images, so each product keeps its own memory bank or Gaussians and
    its own calibrated threshold, and fits ``router`` to tell the products
    apart. At predict time each image goes to the model of the product given
    in ``groups``, or, when ``groups`` is None, of the product ``router``
    predicts (the nearest product's images by default); :meth:`route` says
    which product it chose.

    Each product's ``score_samples`` is on its own model's scale;
    ``decision_function`` (score minus that product's threshold) and
    ``predict`` compare across products.

    Parameters
    ----------
    estimator : estimator
        The anomaly detector (e.g. ``make_patchcore()``) cloned for each
        product; it is fitted on normal images and has ``score_samples``,
        ``decision_function`` and ``predict``.
    router : classifier or None, default=None
        Fitted on (images, groups) to route images given without a group.
        None: ``make_pipeline(ImageEmbedder(), KNeighborsClassifier(1))``,
        the product of the nearest training image in pooled backbone
        features. Not fitted when there is one product.

    Attributes
    ----------
    groups_ : ndarray of shape (n_groups,)
        The products, sorted.
    estimators_ : list of estimators
        The fitted clone of each product, in the order of ``groups_``.
    router_ : classifier or None
        The fitted router (None with one product).
    n_images_ : ndarray of shape (n_groups,)
        Training images per product.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import make_padim
    >>> from skanomaly.grouping import GroupedDetector
    >>> rng = np.random.default_rng(0)
    >>> dark, light = rng.random((8, 64, 64, 3)) * 0.3, 0.7 + rng.random((8, 64, 64, 3)) * 0.3
    >>> model = GroupedDetector(make_padim(image_size=64, random_state=0))
    >>> model = model.fit(np.concatenate([dark, light]), groups=["dark"] * 8 + ["light"] * 8)
    >>> model.groups_.tolist()
    ['dark', 'light']
    >>> model.route(np.concatenate([dark[:2], light[:2]])).tolist()
    ['dark', 'dark', 'light', 'light']
    """

    def __init__(self, estimator, *, router=None):
        self.estimator = estimator
        self.router = router

    def fit(self, X, y=None, *, groups):
        """Fit one clone of ``estimator`` per product, and the router.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
            Normal images of every product.
        y : ignored
        groups : array-like of shape (n,)
            The product of each image.

        Returns
        -------
        self : GroupedDetector
        """
        images = check_images(X)
        groups = self._check_groups(groups, len(images))
        names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        estimators = []
        for k, name in enumerate(names.tolist()):
            members = [images[i] for i in np.flatnonzero(inverse == k)]
            try:
                estimators.append(clone(self.estimator).fit(members))
            except ValueError as exc:
                raise ValueError(f"Product {name!r} ({len(members)} images): {exc}") from exc
        router = None
        if len(names) > 1:
            router = clone(self.router) if self.router is not None else _default_router()
            router.fit(images, groups)
        # Assigned together, once every product is fitted: a failed fit
        # leaves a previously fitted model as it was.
        self.groups_, self.estimators_, self.router_, self.n_images_ = (
            names, estimators, router, counts)
        return self

    @staticmethod
    def _check_groups(groups, n_images):
        if groups is None:
            raise ValueError("GroupedDetector.fit needs groups=, the product of each image.")
        groups = np.asarray(groups)
        if groups.ndim != 1 or len(groups) != n_images:
            raise ValueError(f"groups has shape {groups.shape}, but there are {n_images} images; "
                             "give one product per image.")
        return groups

    def route(self, X):
        """The product each image is sent to when no group is given.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])

        Returns
        -------
        groups : ndarray of shape (n,)
        """
        check_is_fitted(self)
        images = check_images(X)
        if self.router_ is None:
            return np.repeat(self.groups_, len(images))
        return np.asarray(self.router_.predict(images))

    def _routes(self, images, groups):
        """Each image's product: given (checked) or routed."""
        if groups is None:
            groups = self.route(images)
        else:
            groups = self._check_groups(groups, len(images))
            unknown = sorted(set(groups.tolist()) - set(self.groups_.tolist()))
            if unknown:
                raise ValueError(f"Unknown product {unknown[0]!r}; fitted products: "
                                 f"{self.groups_.tolist()}.")
        return groups

    def _each_group(self, X, groups, work):
        """``work(model, images)`` on each product's share of ``X``; yields
        (rows, result)."""
        check_is_fitted(self)
        images = check_images(X)
        groups = self._routes(images, groups)
        for name, model in zip(self.groups_, self.estimators_):
            rows = np.flatnonzero(groups == name)
            if len(rows):
                yield rows, work(model, [images[i] for i in rows])

    def _per_group(self, method, X, groups):
        out = np.empty(len(check_images(X)), dtype=np.float64)
        for rows, values in self._each_group(X, groups, lambda m, x: getattr(m, method)(x)):
            out[rows] = values
        return out

    def anomaly_maps(self, X, groups=None, **kwargs):
        """Per-pixel maps, each from its product's model (its scale).

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
        groups : array-like of shape (n,) or None, default=None
            The product of each image; None routes each image.
        **kwargs
            Passed to :func:`skanomaly.anomaly_maps` (``sigma``,
            ``batch_size``); not ``return_scores``.

        Returns
        -------
        maps : list of ndarray of shape (H_i, W_i)
        """
        return self._pixels(X, groups, masks=False, **kwargs)

    def anomaly_masks(self, X, groups=None, **kwargs):
        """Defect masks, each at its product's calibrated pixel threshold.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
        groups : array-like of shape (n,) or None, default=None
            The product of each image; None routes each image.
        **kwargs
            Passed to :func:`skanomaly.anomaly_masks`.

        Returns
        -------
        masks : list of ndarray of shape (H_i, W_i), bool
        """
        return self._pixels(X, groups, masks=True, **kwargs)

    def _pixels(self, X, groups, masks, **kwargs):
        from .maps import anomaly_maps, anomaly_masks

        draw = anomaly_masks if masks else anomaly_maps
        out = [None] * len(check_images(X))
        for rows, results in self._each_group(X, groups, lambda m, x: draw(m, x, **kwargs)):
            for row, result in zip(rows, results):
                out[row] = result
        return out

    def score_samples(self, X, groups=None):
        """Normality score of each image from its product's model (its scale).

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
        groups : array-like of shape (n,) or None, default=None
            The product of each image; None routes each image (:meth:`route`).

        Returns
        -------
        scores : ndarray of shape (n,)
        """
        return self._per_group("score_samples", X, groups)

    def decision_function(self, X, groups=None):
        """Score minus the product's threshold: negative for anomalies.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
        groups : array-like of shape (n,) or None, default=None
            The product of each image; None routes each image.

        Returns
        -------
        decision : ndarray of shape (n,)
        """
        return self._per_group("decision_function", X, groups)

    def predict(self, X, groups=None):
        """+1 for normal images, -1 for anomalies, each by its product's threshold.

        Parameters
        ----------
        X : list of images or ndarray of shape (n, H, W[, C])
        groups : array-like of shape (n,) or None, default=None
            The product of each image; None routes each image.

        Returns
        -------
        labels : ndarray of shape (n,), int
        """
        return np.where(self.decision_function(X, groups) >= 0, 1, -1)


def _default_router():
    from .embedders import ImageEmbedder

    return make_pipeline(ImageEmbedder(), KNeighborsClassifier(n_neighbors=1))
