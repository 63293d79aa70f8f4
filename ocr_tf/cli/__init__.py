"""The commands: argument parsing, messages and exit codes (`python -m ocr_tf.<verb>`).

Each `ocr_tf/<verb>.py` library module hands `python -m` over to `ocr_tf.cli.<verb>.main`, which
parses its arguments before TensorFlow is imported (so `--help` is instant) and applies one
error policy (`ocr_tf.cli.common.command`). No library module parses arguments or prints for
a user.
"""
