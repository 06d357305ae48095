"""Tests for cli.py: the entry points' one-line messages (no subprocess).

tests/train_eval_test.py runs train.py, eval.py, convert and summary over a
table of bad inputs.
"""

import os

from absl import flags
import pytest

from efficientnet_jax import cli
from efficientnet_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = f'--config={ROOT}/configs/demo.py'


def test_unknown_top_level_field_message():
  argv = ['train.py', CONFIG, '--config.batch_sise=8']
  message = cli.unknown_field_message(argv, AttributeError('"\'batch_sise\'"'))
  assert message.startswith('Unknown config field config.batch_sise in '
                            '--config.batch_sise; config has: augment, '
                            'batch_size, checkpoint_every_steps,'), message
  assert message.endswith('(did you mean batch_size?).')


def test_close_match_is_not_garbled():
  # ml_collections' own message for a close match, as config_flags raises it.
  error = AttributeError('\'\\\'modle\\\'\\nDid you mean "model" instead of '
                         '"modle"?\'')
  message = cli.unknown_field_message(
      ['train.py', CONFIG, '--config.modle.phi=1'], error)
  assert message.startswith('Unknown config field config.modle in '
                            '--config.modle.phi; config has: augment, '), message
  assert 'model, num_epochs' in message
  assert message.endswith('(did you mean model?).') and '\\' not in message
  # Without a loadable config the error's own names are used, cleanly.
  message = cli.unknown_field_message(['train.py', '--config.modle=1'], error)
  assert message == "Unknown config field 'modle' (did you mean model?).", (
      message)


def test_messages_are_one_line():
  assert cli.one_line('a\n  b\tc') == 'a b c'
  assert len(cli.one_line('x' * 10_000)) < 2100
  error = flags.IllegalFlagValueError(
      'flag --config=configs/demo.py:b9: Error whilst parsing config file:\n\n'
      'Traceback (most recent call last):\n  File "x.py", line 1\n'
      "ValueError: Unknown EfficientNet variant 'b9'")
  assert cli.flag_error_message(error) == (
      "flag --config=configs/demo.py:b9: ValueError: Unknown EfficientNet "
      "variant 'b9'")


def test_fatal_prints_one_line_and_exits(capsys, monkeypatch):
  monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
  with pytest.raises(SystemExit) as exited:
    cli.fatal('bad\nvalue', cli.EXIT_USAGE)
  assert exited.value.code == 2
  assert capsys.readouterr().err == 'FATAL: bad value\n'
  monkeypatch.setenv(cli.VERBOSE_ENV, '1')
  assert cli.verbose()


def test_launch_from_flags_or_environment():
  none = dict(coordinator_address=None, num_processes=None, process_id=None)
  assert cli.distributed_args(False, **none, environ={}) is None
  assert cli.distributed_args(True, **none, environ={}) == {}
  environ = dict(JAX_COORDINATOR_ADDRESS='10.0.0.1:1234',
                 JAX_NUM_PROCESSES='4', JAX_PROCESS_ID='3')
  assert cli.distributed_args(False, **none, environ=environ) == dict(
      coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3)
  # Flags win over the environment.
  assert cli.distributed_args(
      False, coordinator_address='h:1', num_processes=2, process_id=0,
      environ=environ) == dict(coordinator_address='h:1', num_processes=2,
                               process_id=0)
  with pytest.raises(errors.ConfigError, match="JAX_PROCESS_ID='x'"):
    cli.distributed_args(False, **none, environ=dict(JAX_PROCESS_ID='x'))
