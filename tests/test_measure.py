import numpy as np

from diffhpo.bench.measure import measure


def test_peak_memory_is_per_block_and_times_are_positive():
    with measure() as big:
        block = np.ones(300 * 2**20 // 8)  # 300 MiB
        block[::512] = 2.0
        del block
    with measure() as small:
        sum(range(10000))
    assert big.wall_s > 0 and big.cpu_s > 0
    assert big.peak_rss_mib - small.peak_rss_mib > 200
    assert small.peak_gpu_mib is None
