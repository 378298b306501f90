"""imagenet-spark: prepare ImageNet with Spark and train image classifiers in a Spark barrier stage."""

__version__ = "0.1.0"
