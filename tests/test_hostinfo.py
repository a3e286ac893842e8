"""The host record that CPU results carry (spine/hostinfo.py)."""
from spine.hostinfo import describe_host, host_info

XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2
"""


def test_host_info_reads_the_processor_and_its_vector_flags(tmp_path, monkeypatch):
    f = tmp_path / "cpuinfo"
    f.write_text(XEON)
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    info = host_info(f)
    assert info["cpu"] == "Intel(R) Xeon(R) Processor"
    assert info["cpu_flags"] == ["avx2", "avx512f", "avx512_bf16", "amx_tile"]  # the first core's line, in _FLAGS order
    assert info["kernel_env"] == {"MKL_CBWR": "AVX2"}
    assert info["torch"].split("+")[0].count(".") == 2


def test_host_info_without_cpuinfo_falls_back_to_the_platform(tmp_path):
    info = host_info(tmp_path / "absent")
    assert info["cpu_flags"] == [] and isinstance(info["cpu"], str)


def test_describe_host_shows_the_kernels_a_run_forces_over_the_hosts():
    info = {"cpu": "AMD EPYC", "cpu_flags": ["avx2"], "torch": "2.13.0+cpu", "cpu_capability": "AVX2",
            "kernel_env": {"MKL_CBWR": "AVX2"}}
    assert describe_host(info) == "AMD EPYC (avx2), torch 2.13.0+cpu, ATen AVX2, MKL_CBWR AVX2"
    assert describe_host(info, {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "SPINE_NUM_THREADS": "1"}) == \
        "AMD EPYC (avx2), torch 2.13.0+cpu, ATen default, MKL_CBWR COMPATIBLE"
    assert describe_host({"cpu": "x", "cpu_flags": [], "torch": "2.4", "gpu": "NVIDIA H200"}) == \
        "x (no avx2), torch 2.4, ATen ?, NVIDIA H200"
