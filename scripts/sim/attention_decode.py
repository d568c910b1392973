# Lane-level simulation of kernels/attention_decode.cu (phase 1 attention_decode_g{1,2,4,8}
# and phase 2 attention_decode_reduce) on random paged caches, compared against plain
# attention. Evidence for the kernel's index math while no GPU has run it: which lane loads
# which 8 elements of which KV position (16-byte vector path and guarded element path), the
# slot / unroll assignment of positions, the block-table page lookups (including the
# next-step prefetch), the xor-shuffle sums inside a half-warp, the per-slot online softmax in
# base 2, the xor-16 merge of a warp's two slots, the cross-warp merge in shared memory, the
# m·ln2 conversion and the split reduce. Host choices are mirrored too: the G variant
# (decode_kernel in src/backend/cuda/attention.rs) and the split count (decode_splits for eager
# steps, fixed per graph bucket with padded tables, splits past a row's context).
#
# It mirrors the kernel's indexing by hand, so it must change with the kernel. Arithmetic is
# Python floats (f64), not f32/bf16: this checks the index math and the softmax bookkeeping,
# not rounding, and the tolerance is tight (1e-9). Memory is checked too: every K/V element the
# model reads must belong to a position this CTA's split owns (p < context, from the row's
# table, this KV head, this layer) and every q element to a head of this group; a 16-byte load
# must be 16-byte aligned; every partial output is written exactly once. It is a check of the
# reasoning, not of the hardware.
#
#   python3 scripts/sim/attention_decode.py            # every case: 12 fixed, 40 random
#   python3 scripts/sim/attention_decode.py a c r7     # some cases
#   python3 scripts/sim/attention_decode.py --break xor16   # run with one index broken
#   python3 scripts/sim/attention_decode.py --breaks   # every break must make a case fail
import math, random, sys

WARPS, LPP, EPL = 4, 16, 8          # DEC_WARPS, DEC_LPP, DEC_EPL
SLOTS, U = WARPS * 32 // LPP, 4     # DEC_SLOTS = 8, DEC_U
STEP = SLOTS * U                    # DEC_STEP = 32
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
INF = math.inf

# Deliberate bugs, each of which the check must catch (see --breaks).
BREAKS = {
    'xor16': 'dot-product shuffle also at offset 16: mixes the two positions of a warp',
    'lane_elems': 'lane element offset 4*sl instead of 8*sl',
    'page': 'page index p % block_size instead of p / block_size',
    'vec_any': '16-byte path whatever head_dim (ignores head_dim % 8)',
    'tail': 'no p < pos_end mask on the K/V loads',
    'half_merge': 'no xor-16 merge of the two slots of a warp',
    'slot': 'slot = warp (both half-warps take the same positions)',
    'prefetch': 'next-step pages read at base + slot instead of base + STEP + slot',
    'ln2': 'part_ml m written in base-2 units (no * ln 2)',
}
brk = None


class Fail(Exception):
    pass


def fmaxf(a, b):
    # CUDA fmaxf: a NaN operand yields the other one.
    if a != a: return b
    if b != b: return a
    return a if a > b else b


def exp2f(x):
    return 2.0 ** x  # 2 ** -inf = 0; NaN stays NaN


def load8(mem, base_align, rowp, d0, head_dim, vec, legal_row, what):
    """dec_load8: elements rowp + d0 .. +7 (zeros past head_dim). `legal_row(e)` says whether
    element index e may be read; `base_align` is the buffer's address in elements mod 8."""
    if d0 >= head_dim: return [0.0] * EPL
    if vec:
        if (base_align + rowp + d0) % 8: raise Fail(f'misaligned 16-byte load of {what} at {rowp + d0}')
        idx = range(rowp + d0, rowp + d0 + EPL)
    else:
        idx = [rowp + d for d in range(d0, d0 + EPL) if d < head_dim]
    out = []
    for e in idx:
        if not (0 <= e < len(mem)) or not legal_row(e): raise Fail(f'illegal read of {what}[{e}]')
        out.append(mem[e])
    return out + [0.0] * (EPL - len(out))


def shfl_xor(vals, o):
    return [vals[L ^ o] for L in range(32)]


def cta(c, G, row, kvh, split, splits, part_o, part_ml):
    nh, nkv, hd, bs, pps = c['nh'], c['nkv'], c['hd'], c['bs'], c['pps']
    q, kc, vc, layer_off = c['q'], c['k'], c['v'], c['layer_off']
    group = nh // nkv
    table_off = c['row_table'][row]
    table = lambda i: c['tables'][table_off + i]
    ctx = c['row_pos'][row] + 1
    pos_begin = split * pps * bs
    pos_end = min(ctx, (split + 1) * pps * bs)
    aligned = (c['q_align'] | c['k_align'] | c['v_align']) % 8 == 0
    vec = aligned if brk == 'vec_any' else (hd & 7) == 0 and aligned
    qscale = c['scale'] * LOG2E

    # Independent statement of what this CTA may read (not derived from the kernel's math).
    own = c['owned'][row]  # position -> pool row index (layer 0, kv head 0)
    legal_kv = set()
    for p in range(pos_begin, pos_end):
        blk = own[p] // bs
        legal_kv.add(((c['layer'] * c['num_blocks'] + blk) * nkv + kvh) * bs + p % bs)
    kv_ok = lambda e: (e // hd) in legal_kv
    legal_q = {row * nh + kvh * group + g for g in range(group)}
    q_ok = lambda e: (e // hd) in legal_q

    # q -> shared memory (warp w fills heads w, w + 4, ...; lanes < 16).
    sm_q = [[[None] * LPP for _ in range(2)] for _ in range(G)]
    for warp in range(WARPS):
        for g in range(warp, G, WARPS):
            for lane in range(LPP):
                d0 = lane * (4 if brk == 'lane_elems' else EPL)
                if g < group:
                    f = load8(q, c['q_align'], (row * nh + kvh * group + g) * hd, d0, hd, vec, q_ok, 'q')
                else:
                    f = [0.0] * EPL
                for j in range(2):
                    sm_q[g][j][lane] = [x * qscale for x in f[4 * j:4 * j + 4]]
    # barrier

    T = WARPS * 32
    warp_of = [t >> 5 for t in range(T)]
    lane_of = [t & 31 for t in range(T)]
    slot_of = [warp_of[t] if brk == 'slot' else warp_of[t] * 2 + (lane_of[t] >> 4) for t in range(T)]
    d0_of = [(lane_of[t] & 15) * (4 if brk == 'lane_elems' else EPL) for t in range(T)]
    acc = [[[0.0] * EPL for _ in range(G)] for _ in range(T)]
    m = [[-INF] * G for _ in range(T)]
    l = [[0.0] * G for _ in range(T)]

    def page_at(p):
        if p >= pos_end: return 0
        return table(p % bs if brk == 'page' else p // bs)

    page = [[page_at(pos_begin + slot_of[t] + SLOTS * u) for u in range(U)] for t in range(T)]
    base = pos_begin
    while base < pos_end:
        kr = [[None] * U for _ in range(T)]
        vr = [[None] * U for _ in range(T)]
        for t in range(T):
            for u in range(U):
                p = base + slot_of[t] + SLOTS * u
                if p < pos_end or brk == 'tail':
                    off = layer_off + ((page[t][u] * nkv + kvh) * bs + p % bs) * hd
                    kr[t][u] = load8(kc, c['k_align'], off, d0_of[t], hd, vec, kv_ok, 'k')
                    vr[t][u] = load8(vc, c['v_align'], off, d0_of[t], hd, vec, kv_ok, 'v')
                else:
                    kr[t][u] = [0.0] * EPL
                    vr[t][u] = [0.0] * EPL
        nxt = base if brk == 'prefetch' else base + STEP
        for t in range(T):
            page[t] = [page_at(nxt + slot_of[t] + SLOTS * u) for u in range(U)]
        # partial dots
        s = [[[0.0] * U for _ in range(G)] for _ in range(T)]
        for t in range(T):
            sl = lane_of[t] & 15
            for g in range(min(G, group)):
                qf = sm_q[g][0][sl] + sm_q[g][1][sl]
                for u in range(U):
                    k = kr[t][u]
                    acc_ = 0.0
                    for i in range(EPL): acc_ += qf[i] * k[i]
                    s[t][g][u] = acc_
        # xor-shuffle sums within the half-warp
        offs = [16, 8, 4, 2, 1] if brk == 'xor16' else [8, 4, 2, 1]
        for o in offs:
            for w in range(WARPS):
                for g in range(min(G, group)):
                    for u in range(U):
                        vals = [s[w * 32 + L][g][u] for L in range(32)]
                        other = shfl_xor(vals, o)
                        for L in range(32): s[w * 32 + L][g][u] = vals[L] + other[L]
        # online softmax per (slot, head), once per step
        pr = [[[0.0] * U for _ in range(G)] for _ in range(T)]
        for t in range(T):
            for g in range(min(G, group)):
                mx = m[t][g]
                for u in range(U):
                    if base + slot_of[t] + SLOTS * u >= pos_end: s[t][g][u] = -INF
                    mx = fmaxf(mx, s[t][g][u])
                ref = 0.0 if mx == -INF else mx
                corr = exp2f(m[t][g] - ref)
                tot = 0.0
                for u in range(U):
                    pr[t][g][u] = exp2f(s[t][g][u] - ref)
                    tot += pr[t][g][u]
                l[t][g] = l[t][g] * corr + tot
                acc[t][g] = [a * corr for a in acc[t][g]]
                m[t][g] = mx
        for t in range(T):
            for u in range(U):
                v = vr[t][u]
                for g in range(min(G, group)):
                    a, p_ = acc[t][g], pr[t][g][u]
                    for i in range(EPL): a[i] += p_ * v[i]
        base += STEP

    # merge the two slots of each warp (xor 16), from a snapshot (the shuffles read old values)
    if brk != 'half_merge':
        m0 = [row_[:] for row_ in m]
        l0 = [row_[:] for row_ in l]
        a0 = [[x[:] for x in row_] for row_ in acc]
        for t in range(T):
            pt = (t & ~31) | (lane_of[t] ^ 16)
            for g in range(G):
                mo, lo = m0[pt][g], l0[pt][g]
                mx = fmaxf(m0[t][g], mo)
                ref = 0.0 if mx == -INF else mx
                a, b = exp2f(m0[t][g] - ref), exp2f(mo - ref)
                l[t][g] = l0[t][g] * a + lo * b
                acc[t][g] = [a0[t][g][i] * a + a0[pt][g][i] * b for i in range(EPL)]
                m[t][g] = mx
    sm_m = [[None] * G for _ in range(WARPS)]
    sm_l = [[None] * G for _ in range(WARPS)]
    sm_o = [[[None] * 128 for _ in range(G)] for _ in range(WARPS)]
    for t in range(T):
        w, lane = warp_of[t], lane_of[t]
        if lane < 16:
            for g in range(G):
                if lane == 0: sm_m[w][g], sm_l[w][g] = m[t][g], l[t][g]
                for i in range(EPL): sm_o[w][g][d0_of[t] + i] = acc[t][g][i]
    # barrier; warp w writes heads w, w + 4, ...
    for warp in range(WARPS):
        for g in range(warp, group, WARPS):
            mx = -INF
            for w in range(WARPS): mx = fmaxf(mx, sm_m[w][g])
            wsum = [0.0 if sm_m[w][g] == -INF else exp2f(sm_m[w][g] - mx) for w in range(WARPS)]
            lsum = sum(sm_l[w][g] * wsum[w] for w in range(WARPS))
            head = row * nh + kvh * group + g
            for lane in range(32):
                for d in range(lane, hd, 32):
                    v = 0.0
                    for w in range(WARPS):
                        if sm_o[w][g][d] is None: raise Fail(f'sm_o[{w}][{g}][{d}] never written')
                        v += sm_o[w][g][d] * wsum[w]
                    i = (head * splits + split) * hd + d
                    if part_o[i] is not None: raise Fail(f'part_o[{i}] written twice')
                    part_o[i] = v
            i = (head * splits + split) * 2
            if part_ml[i] is not None: raise Fail(f'part_ml[{i}] written twice')
            part_ml[i] = mx if brk == 'ln2' else mx * LN2
            part_ml[i + 1] = lsum


def reduce_kernel(part_o, part_ml, rows, nh, hd, splits):
    out = [None] * (rows * nh * hd)
    for r in range(rows):
        for h in range(nh):
            head = r * nh + h
            ml = part_ml[head * splits * 2:][:splits * 2]
            mx = -INF
            for s in range(splits): mx = fmaxf(mx, ml[2 * s])
            denom = sum(ml[2 * s + 1] * math.exp(ml[2 * s] - mx) for s in range(splits) if ml[2 * s] != -INF)
            inv = 1.0 / denom
            for d in range(hd):
                v = 0.0
                for s in range(splits):
                    if ml[2 * s] != -INF: v += part_o[(head * splits + s) * hd + d] * math.exp(ml[2 * s] - mx)
                out[head * hd + d] = v * inv
    return out


def decode_kernel(group):  # src/backend/cuda/attention.rs
    return 1 if group == 1 else 2 if group == 2 else 4 if group <= 4 else 8


def decode_splits(rows, nkv, sm_count, max_pages):  # src/backend/decode_graph.rs
    max_pages = max(max_pages, 1)
    work = max(rows * nkv, 1)
    want = min(max(-(-2 * sm_count // work), 1), max_pages)
    pps = -(-max_pages // want)
    return -(-max_pages // pps), pps


def run(name, nh, nkv, hd, bs, ctxs, mode, seed, align=(0, 0, 0)):
    rnd = random.Random(seed)
    group = nh // nkv
    G = decode_kernel(group)
    rows = len(ctxs)
    pages = [-(-c // bs) for c in ctxs]
    num_blocks = sum(pages) + 5
    num_layers, layer = 2, 1
    row_elems = hd
    layer_elems = num_blocks * nkv * bs * row_elems
    perm = list(range(num_blocks)); rnd.shuffle(perm)
    tables_per_row, it = [], iter(perm)
    for p in pages: tables_per_row.append([next(it) for _ in range(p)])
    # Cache values: random everywhere (unused blocks too); the legality check catches reads.
    kc = [rnd.uniform(-2, 2) for _ in range(num_layers * layer_elems)]
    vc = [rnd.uniform(-2, 2) for _ in range(num_layers * layer_elems)]
    q = [rnd.uniform(-2, 2) for _ in range(rows * nh * hd)]
    scale = 1 / math.sqrt(hd)
    max_pages = max(pages)
    if mode[0] == 'eager':
        splits, pps = decode_splits(rows, nkv, mode[1], max_pages)
        flat, row_table = [], []
        for t in tables_per_row: row_table.append(len(flat)); flat += t
        flat.append(0)
    else:  # graph bucket: padded tables of `width` entries, fixed split
        width, pps = mode[1], mode[2]
        assert max_pages <= width
        splits = -(-width // pps)
        flat = []
        for t in tables_per_row: flat += t + [0] * (width - len(t))
        row_table = [r * width for r in range(rows)]
    c = dict(nh=nh, nkv=nkv, hd=hd, bs=bs, pps=pps, q=q, k=kc, v=vc, scale=scale,
             layer=layer, num_blocks=num_blocks, layer_off=layer * layer_elems,
             tables=flat, row_table=row_table, row_pos=[x - 1 for x in ctxs],
             q_align=align[0], k_align=align[1], v_align=align[2],
             owned=[[tables_per_row[r][p // bs] * bs + p % bs for p in range(ctxs[r])] for r in range(rows)])
    part_o = [None] * (rows * nh * splits * hd)
    part_ml = [None] * (rows * nh * splits * 2)
    for row in range(rows):
        for kvh in range(nkv):
            for split in range(splits):
                cta(c, G, row, kvh, split, splits, part_o, part_ml)
    if any(x is None for x in part_o) or any(x is None for x in part_ml):
        raise Fail('a partial output was never written')
    out = reduce_kernel(part_o, part_ml, rows, nh, hd, splits)
    worst = 0.0
    for r in range(rows):
        for h in range(nh):
            kvh = h // group
            qv = q[(r * nh + h) * hd:][:hd]
            rowoff = lambda p: layer * layer_elems + ((tables_per_row[r][p // bs] * nkv + kvh) * bs + p % bs) * hd
            sc = [sum(a * b for a, b in zip(qv, kc[rowoff(p):][:hd])) * scale for p in range(ctxs[r])]
            mx = max(sc); w = [math.exp(x - mx) for x in sc]; den = sum(w)
            for d in range(hd):
                want = sum(w[p] * vc[rowoff(p) + d] for p in range(ctxs[r])) / den
                got = out[(r * nh + h) * hd + d]
                e = abs(got - want) if got == got else INF
                if not e <= 1e-9 * (1 + abs(want)):
                    raise Fail(f'row {r} head {h} d {d}: got {got} want {want}')
                worst = max(worst, e)
    vec = (hd & 7) == 0 and all(a % 8 == 0 for a in align)
    print(f'ok {name}: heads {nh}/{nkv} (G={G}) hd={hd} bs={bs} ctx={ctxs} {mode[0]} '
          f'splits={splits}x{pps}p {"vec" if vec else "scalar"} worst={worst:.1e}')


# name: (num_heads, num_kv_heads, head_dim, block_size, contexts, mode, seed[, (q, k, v)
# buffer offsets in elements mod 8]). mode: ('eager', sm_count) runs decode_splits;
# ('graph', width, pages_per_split) pads the tables to `width` pages (splits past a context).
CASES = {
    'a': (2, 2, 128, 16, [1, 40, 77], ('eager', 4), 1),
    'b': (4, 2, 64, 3, [5, 33, 70], ('eager', 8), 2),
    'c': (6, 2, 72, 1, [9, 50], ('eager', 4), 3),
    'd': (4, 1, 13, 16, [17, 100], ('eager', 2), 4),
    'e': (8, 1, 128, 16, [130], ('eager', 2), 5),
    'f': (10, 2, 64, 3, [2, 45], ('eager', 3), 6),
    'g': (8, 1, 13, 1, [20, 7], ('eager', 2), 7),
    'h': (4, 2, 128, 16, [1, 20, 150], ('graph', 10, 1), 8),
    'i': (2, 2, 72, 3, [4, 40], ('graph', 16, 2), 9),
    'j': (16, 2, 128, 3, [65, 97], ('eager', 1), 10),
    'k': (4, 2, 64, 16, [33, 90], ('eager', 2), 11, (0, 1, 0)),
    'l': (3, 1, 128, 16, [64], ('eager', 1), 12),
}


def random_case(i):
    """Random shapes on top of the fixed cases: every group 1..8, head_dim 13..128, block sizes
    1/3/16, 1-4 rows with contexts up to 300, eager or graph splits, now and then a buffer that
    is not 16-byte aligned (forcing the element path)."""
    r = random.Random(1000 + i)
    nkv = r.choice([1, 2, 3])
    nh = nkv * r.randint(1, 8)
    hd = r.choice([13, 16, 40, 64, 72, 128])
    bs = r.choice([1, 3, 16])
    ctxs = [r.randint(1, 300) for _ in range(r.randint(1, 4))]
    pages = max(-(-c // bs) for c in ctxs)
    if r.random() < 0.5:
        mode = ('eager', r.choice([1, 2, 4, 16]))
    else:
        mode = ('graph', pages + r.randint(0, 5), r.randint(1, max(1, pages // 2)))
    align = (0, 0, r.choice([0, 0, 0, 3]))
    return (nh, nkv, hd, bs, ctxs, mode, 2000 + i, align)


N_RANDOM = 40
for _i in range(N_RANDOM):
    CASES[f'r{_i}'] = random_case(_i)


def run_cases(names):
    for n in names:
        a = CASES[n]
        run(n, *a[:7], *(a[7:] or []))


def main(argv):
    global brk
    if argv[:1] == ['--breaks']:
        caught = 0
        for b, what in BREAKS.items():
            brk = b
            try:
                run_cases(sorted(CASES))
            except (Fail, IndexError, ZeroDivisionError) as e:
                print(f'break {b} ({what}): caught: {type(e).__name__}: {e}')
                caught += 1
            else:
                print(f'break {b} ({what}): NOT CAUGHT')
        print(f'{caught}/{len(BREAKS)} deliberate breaks caught')
        sys.exit(0 if caught == len(BREAKS) else 1)
    if argv[:1] == ['--break']:
        brk = argv[1]; assert brk in BREAKS, sorted(BREAKS)
        argv = argv[2:]
    run_cases(argv or sorted(CASES))
    print('all cases match plain attention')


if __name__ == '__main__':
    main(sys.argv[1:])
