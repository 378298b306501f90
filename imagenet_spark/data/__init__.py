"""Data: input layouts, image cleaning, the on-disk schema, the Spark partition job, readers."""
