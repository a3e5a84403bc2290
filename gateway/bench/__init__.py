"""``edge-gateway bench``: throughput, latency and memory of this gateway on this box.

``runner`` drives the scenarios, ``systems`` the processes under test, ``agents`` the load
generators and the bare paho-mqtt ceiling, ``collector`` the upstream subscriber, ``wire``
the minimal MQTT framing they share, ``micro`` the in-process per-step micro-benchmark.
"""
