"""Serving: a trained model as a self-contained SavedModel, and classifying images with it, without Spark.

``labels`` reads and checks the class names of a model dir, ``export`` writes the SavedModel whose
``serving_default`` signature carries the eval preprocessing, ``predict`` classifies files on this machine, and
``evaluation`` aggregates predictions with their truth into accuracy per class. The Spark drivers over these
(batch inference, evaluation of a split) live in :mod:`imagenet_spark.jobs`; nothing here imports Spark.
"""
