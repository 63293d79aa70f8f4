"""Data: TFRecord schema and writer (records), augmentation (augment), the tf.data pipeline
(pipeline), dataset metadata and converters (datasets, convert), reading image and mask files
(images), the data doctor (check), and the built-in demo set."""
