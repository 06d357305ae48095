"""Freed compiler memory goes back after compiles; step memory stays mapped."""

import os
import subprocess
import sys
import textwrap
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

  def test_off_cpu_the_allocator_and_dispatch_are_left_alone(self):
    with mock.patch.object(host_memory, '_libc_function') as libc:
      self.assertFalse(host_memory.reuse_execution_memory('gpu'))
    libc.assert_not_called()

  def test_glibc_trim_is_found_on_linux(self):
    # CI and the TPU/GPU hosts this targets run glibc.
    self.assertTrue(host_memory.release_freed_memory())


# A donated step with a 64 MiB temporary, as the train step is (its state is
# donated, so outputs reuse inputs): 8 executions in a fresh process (the
# dispatch switch is read when jax creates its CPU client). Prints the
# temporary's size, then the page faults of each execution.
_FAULTS_SCRIPT = textwrap.dedent("""
    import resource, sys
    from efficientnet_jax import host_memory
    if sys.argv[1] == 'reuse':
      assert host_memory.reuse_execution_memory()
    import jax, jax.numpy as jnp
    x = jnp.ones((16384, 1024), jnp.float32)
    w = jnp.full((1024, 1), 1e-6, jnp.float32)
    step = jax.jit(lambda x, w: x * 0.5 + jnp.dot(jnp.sin(x) + x[::-1], w),
                   donate_argnums=0).lower(x, w).compile()
    print(step.memory_analysis().temp_size_in_bytes)
    for _ in range(8):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      x = step(x, w).block_until_ready()
      print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults_per_execution(mode: str) -> tuple[int, list[int]]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, '-c', _FAULTS_SCRIPT, mode], check=True,
      capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu')).stdout
  temp_bytes, *faults = map(int, out.split()[-9:])
  return temp_bytes, faults


class ExecutionMemoryTest(absltest.TestCase):

  def test_steady_state_executions_fault_in_no_fresh_pages(self):
    temp_bytes, faults = page_faults_per_execution('reuse')
    pages = temp_bytes // 4096
    self.assertGreaterEqual(temp_bytes, 64 << 20)  # The buffer under test.
    # The first executions settle the heap; from then on no step maps pages.
    self.assertLess(max(faults[-3:]), pages // 100, faults)
    # glibc's defaults, for contrast: every execution maps its temporary anew.
    _, default_faults = page_faults_per_execution('default')
    self.assertGreater(min(default_faults[-3:]), pages // 2, default_faults)


if __name__ == '__main__':
  absltest.main()
