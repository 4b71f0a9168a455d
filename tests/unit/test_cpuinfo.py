"""The CPU's name and flags from /proc/cpuinfo texts of an x86 and an ARM machine: what the
tuning cache keys by, and what the int8 quantizer reads."""

from __future__ import annotations

from pathlib import Path

from app.cpuinfo import cpu_flags, cpu_identity, cpuinfo_fields

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd asimddp sve
CPU part\t: 0xd40
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_first_processors_fields_and_flags_are_read(tmp_path: Path) -> None:
    x86, arm = write(tmp_path, "x86", X86), write(tmp_path, "arm", ARM)
    fields = cpuinfo_fields(x86)
    assert fields is not None
    assert (fields["model name"], fields["processor"]) == ("AMD EPYC 7B13", "0")
    assert cpu_flags(x86) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp", "sve"}
    assert cpuinfo_fields(tmp_path / "missing") is None and cpu_flags(tmp_path / "missing") is None


def test_the_identity_tells_cpus_of_one_name_with_other_flags_apart(tmp_path: Path) -> None:
    """Virtual machines often name CPUs of several generations alike: the flags decide."""
    avx2 = cpu_identity(write(tmp_path, "avx2", X86))
    vnni = cpu_identity(write(tmp_path, "vnni", X86.replace("fma", "fma avx512_vnni")))
    assert "AMD EPYC 7B13 flags:" in avx2 and avx2 != vnni
    assert avx2 == cpu_identity(write(tmp_path, "again", X86))  # the same CPU, the same key
    assert "0xd40 flags:" in cpu_identity(write(tmp_path, "arm", ARM))
    assert cpu_identity(tmp_path / "missing")  # not Linux: still a key, from platform
