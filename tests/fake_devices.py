"""XLA_FLAGS for a subprocess that runs on N fake CPU devices.

The fake devices of one process are threads that meet at every collective;
XLA:CPU aborts the process when one of them is later than its terminate
timeout (40 s by default), which a loaded 2-core machine can exceed while
the other threads wait. The tests allow 10 minutes instead: a late thread
is slowness, not a hang, and each test bounds its subprocess's time itself.
"""

TERMINATE_TIMEOUT_SECONDS = 600


def xla_flags(count: int, existing: str = '') -> str:
  return (f'{existing} --xla_force_host_platform_device_count={count} '
          '--xla_cpu_collective_call_terminate_timeout_seconds='
          f'{TERMINATE_TIMEOUT_SECONDS}').strip()
