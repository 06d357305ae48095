"""Tests for cli.py: the entry points' one-line messages (no subprocess).

tests/train_eval_test.py runs train.py and eval.py themselves.
"""

import os

from efficientnet_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_top_level_field_message():
  argv = ['train.py', f'--config={ROOT}/configs/demo.py',
          '--config.batch_sise=8']
  message = cli.unknown_field_message(argv, AttributeError('"\'batch_sise\'"'))
  assert message.startswith('Unknown config field config.batch_sise in '
                            '--config.batch_sise; config has: augment, '
                            'batch_size, checkpoint_every_steps,'), message
