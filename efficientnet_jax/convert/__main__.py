r"""Command line: convert published EfficientNet weights into our checkpoint.

  python -m efficientnet_jax.convert --source=tf \
      --input=efficientnet-b0 --variant=b0 --output=converted/b0

Errors are one line, `FATAL: <what is wrong and how to fix it>` (cli.run;
`--verbose` for the traceback).
"""

from __future__ import annotations

from absl import app
from absl import flags

from efficientnet_jax import cli
from efficientnet_jax import convert

FLAGS = flags.FLAGS
flags.DEFINE_enum('source', None, list(convert.SOURCES),
                  "Where the weights come from: 'tf' (official TF checkpoints "
                  "incl. AutoAugment/RandAugment/AdvProp/NoisyStudent/Lite/"
                  "EdgeTPU, and google/automl EfficientNetV2), "
                  "'keras' (keras.applications .h5/.weights.h5/.keras) or "
                  "'timm' (.safetensors, or .pth when torch is installed).")
flags.DEFINE_string('input', None, 'The checkpoint: TF directory or prefix, '
                    'Keras file, timm file.')
flags.DEFINE_string('variant', None, "'b0'..'b8', 'l2', 'lite0'..'lite4', "
                    "'edgetpu-s'..'edgetpu-l', 'v2-b0'..'v2-b3', "
                    "'v2-s'..'v2-xl'.")
flags.DEFINE_string('output', None, 'New checkpoint directory to write.')
flags.DEFINE_boolean('advprop', None, 'The weights expect AdvProp [-1, 1] '
                     "input. Default: guessed from the path ('advprop', or "
                     "timm's '_ap' tag).")
flags.DEFINE_enum('padding', 'auto', list(convert.PADDINGS),
                  "'auto': 'same' for tf/keras and timm tf_efficientnet_*, "
                  "'symmetric' for timm's own efficientnet_* weights (whose "
                  'BN eps 1e-5 is then folded into the BN scales); timm '
                  "kinds are told apart by 'tf_efficientnet' in the path.")
flags.DEFINE_boolean('use_ema', True, 'TF: read the ExponentialMovingAverage '
                     'copies, as the official eval does.')
flags.DEFINE_boolean('allow_unused', False, 'Warn about, instead of rejecting, '
                     'checkpoint tensors that have no place in the model.')
flags.DEFINE_list('mean_rgb', None, 'Override the recorded input mean (three '
                  'values on [0, 255]).')
flags.DEFINE_list('std_rgb', None, 'Override the recorded input std (three '
                  'values on [0, 255]).')
flags.DEFINE_integer('resolution', None, "Evaluation resolution recorded in "
                     "the checkpoint's model section; default the variant's "
                     '(e.g. 475 for the NoisyStudent L2-475 checkpoint).')
flags.DEFINE_boolean('keep_background_class', False, 'A 1001-class '
                     'classifier (official EdgeTPU; output 0 is the '
                     'background) stays 1001 wide instead of losing output 0.')
flags.mark_flags_as_required(['source', 'input', 'variant', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  convert.check_output(FLAGS.output)  # Before the (slow) conversion.
  converted = convert.convert(
      FLAGS.source, FLAGS.input, FLAGS.variant, advprop=FLAGS.advprop,
      padding=FLAGS.padding, use_ema=FLAGS.use_ema,
      allow_unused=FLAGS.allow_unused, mean_rgb=FLAGS.mean_rgb,
      std_rgb=FLAGS.std_rgb, resolution=FLAGS.resolution,
      keep_background_class=FLAGS.keep_background_class)
  convert.save(converted, FLAGS.output)


if __name__ == '__main__':
  cli.run(main)
