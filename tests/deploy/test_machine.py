"""cpu_isa: what the CPU offers for bf16 / int8 inference, as recorded with every deploy figure."""
from __future__ import annotations

import torch

from convscope.deploy.machine import cpu_isa


def test_cpu_isa_fields_agree_with_the_flags():
    isa = cpu_isa()
    assert isa["capability"] == torch.backends.cpu.get_cpu_capability()
    flags = set(isa["flags"])
    assert isa["vnni"] == bool({"avx512_vnni", "avx_vnni"} & flags)
    assert isa["amx"] == ("amx_tile" in flags)
    assert isa["summary"].startswith(isa["capability"])
    assert ("no AMX" in isa["summary"]) == (not isa["amx"])
