"""farmslm: a sensor-aware tomato assistant for greenhouse edge devices."""

__version__ = "0.1.0"
