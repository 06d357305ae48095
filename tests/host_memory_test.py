"""The compiler's freed memory is handed back after every compilation."""

from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp

from efficientnet_jax import host_memory


class HostMemoryTest(absltest.TestCase):

  def test_trims_after_each_backend_compile_and_registers_once(self):
    compiles, trims = [], []

    def count_compiles(event, duration, **unused):
      del duration, unused
      if event == host_memory.BACKEND_COMPILE_EVENT:
        compiles.append(event)

    x = jnp.ones(7)
    host_memory.release_after_each_compile()
    host_memory.release_after_each_compile()  # A second call adds nothing.
    jax.monitoring.register_event_duration_secs_listener(count_compiles)
    with mock.patch.object(host_memory, '_malloc_trim',
                           return_value=trims.append):
      # A function never compiled before in this process: a fresh compile.
      jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(x).block_until_ready()
    jax.monitoring.unregister_event_duration_listener(count_compiles)
    self.assertNotEmpty(compiles)
    self.assertEqual(trims, [0] * len(compiles))

  def test_glibc_trim_is_found_on_linux(self):
    # CI and the TPU/GPU hosts this targets run glibc.
    self.assertTrue(host_memory.release_freed_memory())


if __name__ == '__main__':
  absltest.main()
