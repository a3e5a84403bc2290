"""Simulated sensors for edge-gateway: an MQTT fleet and a serial (pty) device.

They speak only wire formats (MQTT payloads, serial lines) and never import ``gateway``.
Entry point: ``edge-gateway-sim`` (:mod:`simulators.cli`); importable API:
:func:`simulators.mqtt_fleet.run_fleet`, :class:`simulators.serial_device.SerialDevice` with
:func:`simulators.serial_device.run_serial`, and :mod:`simulators.signals`.
"""
