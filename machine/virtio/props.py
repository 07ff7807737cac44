"""QEMU-style -device property values: booleans, on/off/auto, integers and sizes, each parsed
the way QEMU parses them, with QEMU-like one-line errors."""

from __future__ import annotations

from ..config import ConfigError

_TRUE = {"on", "yes", "true", "y"}
_FALSE = {"off", "no", "false", "n"}
_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"Property '{name}' doesn't take value '{value}' (use 'on' or 'off')")


def parse_on_off_auto(name: str, value: str) -> str:
    v = value.strip().lower()
    if v in _TRUE:
        return "on"
    if v in _FALSE:
        return "off"
    if v == "auto":
        return "auto"
    raise ConfigError(f"Property '{name}' doesn't take value '{value}' (use 'on', 'off' or 'auto')")


def parse_int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value.strip(), 0)
    except ValueError:
        raise ConfigError(f"Property '{name}' expects an integer, not '{value}'") from None
    if not lo <= n <= hi:
        raise ConfigError(f"Property '{name}' value {n} is out of range [{lo}, {hi}]")
    return n


def parse_size(name: str, value: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    v = value.strip().lower()
    num, suffix = v, ""
    if v and v[-1] in _SUFFIX and not v.startswith("0x"):
        num, suffix = v[:-1], v[-1]
    try:
        n = float(num) if "." in num else int(num, 0)
        # 1.0e999 is an infinite float and a huge one can overflow with the suffix: as QEMU,
        # anything that is not a size below 2^64 is "not a size" (int(inf) would raise).
        n = int(n * _SUFFIX[suffix])
    except (ValueError, OverflowError):
        raise ConfigError(f"Property '{name}' expects a size, not '{value}'") from None
    if n >= 1 << 64:
        raise ConfigError(f"Property '{name}' expects a size below 2^64, not '{value}'")
    if not lo <= n <= hi:
        raise ConfigError(f"Property '{name}' value {n} is out of range [{lo}, {hi}]")
    return n
