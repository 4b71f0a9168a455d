"""Whether this CPU's int8 kernels can saturate, which decides the default of
`--reduce-range`.

ONNX Runtime multiplies uint8 activations by int8 weights on x86 with an instruction that
adds each pair of products into 16 bits (VPMADDUBSW) unless the CPU has VNNI, whose dot
product accumulates in 32 bits. Without VNNI, full-range 8-bit weights can overflow that
sum and quietly change a model's answers; 7-bit weights (`reduce_range`) cannot. ARM's
dot-product instructions and 8-bit weights of uint8 type (ORT's U8U8 kernels) do not
saturate either.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from app.cpuinfo import CPUINFO, cpu_flags

#: /proc/cpuinfo flags of a 32-bit int8 dot product: AVX512-VNNI, AVX-VNNI, AMX.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})


@dataclass(frozen=True)
class SaturationCheck:
    """Whether u8s8 int8 kernels saturate here, and the reason, for the report."""

    saturates: bool
    why: str


def int8_saturation(cpuinfo: Path = CPUINFO, machine: str | None = None) -> SaturationCheck:
    """Read from the CPU's flags; a CPU whose flags cannot be read is taken not to
    saturate (ONNX Runtime's own default), and the reason says so."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return SaturationCheck(False, f"{machine} CPU: its int8 dot products do not saturate")
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return SaturationCheck(
            False, f"x86 CPU whose flags could not be read ({cpuinfo}): assumed to have VNNI"
        )
    found = sorted(flags & VNNI_FLAGS)
    if found:
        return SaturationCheck(False, f"x86 CPU with {', '.join(found)}: no saturation")
    return SaturationCheck(
        True, "x86 CPU without VNNI: full-range int8 weights can saturate its u8s8 kernels"
    )
