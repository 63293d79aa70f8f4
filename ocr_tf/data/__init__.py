"""Data: TFRecord schema and writer (records), augmentation (augment), the tf.data pipeline
(pipeline), dataset metadata and converters (datasets, convert), and the built-in demo set."""
