#!/usr/bin/env python3
"""Writes the seed inputs of tests/fuzz/fuzz_decode.c into tests/fuzz/seeds/.

Each seed is a valid problem (or a near miss) spelled in the byte layout that decode_spec() in
fuzz_decode.c reads, so that the fuzzer starts from the interesting paths (multi-token, token
slots with num_accepted, varlen, every dtype and layout, NaN/Inf poison, out beside the pool)
instead of finding them byte by byte. Keep it in step with decode_spec().

    python3 tests/fuzz/make_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ACT = {"f32": 0, "f16": 1, "bf16": 2}
STATE = {"f32": 0, "bf16": 1}
IDX = {"i64": 0, "i32": 1}


def seed(name, N=3, H=1, HV=2, K=16, V=8, T=1, slots=8, act="f32", state="f32", idx="i64", layout=0,
         head_map=0, l2norm=1, null_zero=0, threads=0, scale=0, strides=(0,) * 6, arena=None, values="tame",
         poison=(), write=False, token_slots=False, accepted=False, cu=None, read=None, writes=None,
         acc=None, ts=None, rng=12345, ts_stride_byte=0, cu_tail=(0,), counter=None, struct02=False,
         folder="seeds"):
    b = bytearray()
    b.append(N)
    b.append(H - 1)
    b.append(1 + 2 * (HV // H - 1) if HV % H == 0 and HV // H <= 3 else 2 * (HV - 1))
    for d in (K, V):
        b.append({128: 232, 256: 240, 300: 244}.get(d, d - 1))
    b.append(T)
    b.append(slots - 1)
    b += bytes([ACT[act], STATE[state], IDX[idx], layout + 2 * head_map, l2norm | null_zero << 3, 0, threads,
                scale])
    b += bytes(strides)
    b += bytes([0, 0])  # no NULL pointer, no misalignment
    b += bytes([224 + arena[0], arena[1]] if arena else [0, 0])
    b.append({"tame": 0, "poison": 200 + len(poison) - 1 if poison else 200, "wild": 240}[values])
    b += struct.pack(">Q", rng)
    for tensor, where, kind in poison:
        b.append(tensor)
        b += struct.pack(">Q", where)
        b.append(kind)
    b.append((1 if write else 0) | (4 if token_slots else 0) | (16 if accepted else 0) | (64 if cu else 0))
    if accepted:
        b.append(0)  # slot_indices given
    b.append(ts_stride_byte)  # 0: token_slots_stride 0 = num_tokens
    tt = max(T, 1)
    for n in range(N):
        b.append(read[n] if read else n % slots)
        b.append(writes[n] if writes else (n + N) % slots)
        b.append(acc[n] - 1 if acc else 0)
    for n in range(N):
        for t in range(tt):
            b.append(ts[n][t] if ts else (N + n * tt + t) % slots)
    b.append(0)  # cu_seqlens[0] = 0
    for n in range(N):
        b.append(cu[n] if cu else 0)
    b += bytes(cu_tail)  # (0,): cu_seqlens unbroken
    if counter or struct02:  # bad_index_rows (checked mode), then the 0.2 struct: read last
        b.append({None: 0, "own": 200, "misaligned": 201, "pool": 202, "out": 203}[counter])
        b.append(240 if struct02 else 0)
    with open(os.path.join(HERE, folder, name), "wb") as f:
        f.write(bytes(b))


def main():
    os.makedirs(os.path.join(HERE, "seeds"), exist_ok=True)
    seed("single_f32_vk", N=3, HV=2, K=16, V=8, read=[0, 1, 2], writes=[0, 1, 2])
    seed("padding_null_zero", N=4, H=2, HV=4, K=8, V=8, null_zero=1, read=[0, 1, 200, 3])
    seed("write_slots_bf16_kv", N=3, H=1, HV=3, K=12, V=20, act="bf16", state="bf16", layout=1, write=True,
         read=[0, 1, 2], writes=[3, 4, 5])
    seed("f16_tiled_i32", N=2, H=2, HV=4, K=24, V=16, act="f16", idx="i32", head_map=1, read=[1, 2],
         writes=[1, 2])
    seed("strided_no_l2norm", N=3, H=1, HV=2, K=10, V=6, l2norm=0, scale=230,
         strides=(215, 215, 150, 220, 150, 225), read=[0, 1, 2])
    seed("multi_token_snapshots", N=2, H=1, HV=2, K=16, V=16, T=4, slots=8, token_slots=True,
         ts=[[2, 3, 4, 5], [6, 7, 200, 1]], read=[0, 1])
    seed("mtp_accepted", N=2, H=1, HV=2, K=8, V=8, T=3, slots=8, token_slots=True, accepted=True,
         acc=[2, 3], ts=[[0, 1, 2], [3, 4, 5]], read=[6, 7])
    seed("varlen", N=3, H=1, HV=1, K=8, V=8, T=4, cu=[2, 0, 4], read=[0, 1, 2])
    seed("head_128", N=2, H=1, HV=2, K=128, V=128, T=2, read=[0, 1])
    seed("poison", N=3, H=1, HV=2, K=8, V=8, values="poison", poison=[(0, 5, 0), (2, 40, 1), (3, 1, 2)],
         read=[0, 1, 2])
    seed("wild", N=3, H=1, HV=2, K=8, V=8, values="wild", read=[0, 1, 2])
    # arena=(0, case): out placed by case (0 ends at the pool, 1 starts at its end, 2/3 one element
    # into it, 4 at its start, 5 apart, 6/7 anywhere)
    seed("out_before_pool", N=2, H=1, HV=1, K=8, V=8, arena=(0, 0), read=[0, 1])
    seed("out_after_pool", N=2, H=1, HV=1, K=8, V=8, arena=(0, 1), read=[0, 1])
    seed("out_overlaps_pool", N=2, H=1, HV=1, K=8, V=8, arena=(0, 2), read=[0, 1])
    seed("counter_own", N=3, H=1, HV=2, K=8, V=8, T=2, read=[0, 1, 2], counter="own")
    seed("counter_misaligned", N=2, H=1, HV=2, K=8, V=8, read=[0, 1], counter="misaligned")
    seed("counter_in_pool", N=2, H=1, HV=2, K=8, V=8, read=[0, 1], counter="pool")
    seed("counter_in_out", N=2, H=1, HV=2, K=8, V=8, read=[0, 1], counter="out")
    seed("struct_02", N=2, H=1, HV=2, K=8, V=8, T=2, read=[0, 1], struct02=True)
    seed("threads", N=6, H=1, HV=2, K=128, V=128, T=4, threads=2, read=[0, 1, 2, 3, 4, 5])
    # Inputs that found library bugs, since fixed (docs/errors.md); `make fuzz` replays them.
    # cu_seqlens = {INT64_MIN, 1}: corruption byte 219 (entry `at` = 0 gets extreme[2] = INT64_MIN)
    seed("cu_difference_overflow.bin", N=1, H=1, HV=1, K=1, V=1, T=1, slots=2, cu=[1], read=[0],
         cu_tail=(219, 0, 2), folder="regressions")
    # token_slots_stride = INT64_MAX / 2 (byte 242) with N = 4
    seed("token_slots_stride_overflow.bin", N=4, H=1, HV=1, K=1, V=1, T=1, slots=8, token_slots=True,
         read=[0, 1, 2, 3], ts_stride_byte=242, folder="regressions")


if __name__ == "__main__":
    main()
