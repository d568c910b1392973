# Lane-level simulation of kernels/attention_prefill.cu (PTX semantics of ldmatrix / mma
# taken from the ISA definitions), compared against a plain reference attention.
# Evidence for the fragment-layout index math while no GPU has run the kernel: it mirrors the
# kernel's indexing by hand, so it must be updated with the kernel. Without arguments it runs
# every case (a few minutes in pure Python); with case letters, only those.
#   python3 scripts/sim/attention_prefill_mma.py [a b c ...]
import math, random, struct

def bf16(x):
    if math.isinf(x) or math.isnan(x): return x
    b = struct.unpack('<I', struct.pack('<f', x))[0]
    lsb = (b >> 16) & 1
    b = (b + 0x7fff + lsb) & 0xffff0000
    return struct.unpack('<f', struct.pack('<I', b))[0]

PF_M = PF_N = 64; PAD = 8

def ldmatrix(smem, addrs, trans):
    # addrs[lane] = (row, col) of the 8-element row lane%8 of matrix lane//8
    regs = [[None]*32 for _ in range(4)]
    for i in range(4):
        M = [[smem[addrs[8*i+r][0]][addrs[8*i+r][1]+c] for c in range(8)] for r in range(8)]
        for L in range(32):
            g, t = L >> 2, L & 3
            if not trans: regs[i][L] = (M[g][2*t], M[g][2*t+1])
            else: regs[i][L] = (M[2*t][g], M[2*t+1][g])
    return regs  # regs[i][lane]

def mma(d, a, b0, b1):
    # d[lane][4], a[lane][4] pairs, b0[lane], b1[lane] pairs
    A = [[0.0]*16 for _ in range(16)]; B = [[0.0]*8 for _ in range(16)]; C = [[0.0]*8 for _ in range(16)]
    for L in range(32):
        g, t = L >> 2, L & 3
        A[g][2*t], A[g][2*t+1] = a[L][0]
        A[g+8][2*t], A[g+8][2*t+1] = a[L][1]
        A[g][2*t+8], A[g][2*t+9] = a[L][2]
        A[g+8][2*t+8], A[g+8][2*t+9] = a[L][3]
        B[2*t][g], B[2*t+1][g] = b0[L]
        B[2*t+8][g], B[2*t+9][g] = b1[L]
        C[g][2*t], C[g][2*t+1], C[g+8][2*t], C[g+8][2*t+1] = d[L]
    for L in range(32):
        g, t = L >> 2, L & 3
        def dot(r, c): return C[r][c] + sum(A[r][k]*B[k][c] for k in range(16))
        d[L] = [dot(g, 2*t), dot(g, 2*t+1), dot(g+8, 2*t), dot(g+8, 2*t+1)]

def kernel(D, q, kc, vc, tiles, tables, out, nh, nkv, hd, bs, hp, scale, grid_y):
    for bx, tile in enumerate(tiles):
        for by in range(grid_y):
            cta(D, q, kc, vc, tile, tables, out, nh, nkv, hd, bs, hp, scale, by)

def cta(D, q, kc, vc, tile, tables, out, nh, nkv, hd, bs, hp, scale, by):
    row0, nrows, pos0, toff = tile
    head0 = by * hp; kvh = head0 // (nh // nkv); kv_end = pos0 + nrows
    sl2 = scale * 1.4426950408889634
    k_s = [[float('nan')]*(D+PAD) for _ in range(PF_N)]
    v_s = [[float('nan')]*(D+PAD) for _ in range(PF_N)]
    def qpos(m):
        r = m // hp
        return pos0 + r if r < nrows else kv_end - 1
    def stage(dst, rows, src):
        for j in range(rows):
            f = src(j)
            for c in range(D // 8):
                d0 = c*8
                for i in range(8):
                    dst[j][d0+i] = f(d0+i) if (f is not None and d0+i < hd) else 0.0
    def qsrc(m):
        r = m // hp
        if r >= nrows: return None
        base = ((row0 + r)*nh + head0 + m % hp)*hd
        return lambda d: q[base + d]
    def kvsrc(cache, t0):
        def f(j):
            p = t0 + j
            if p >= kv_end: return None
            page = tables[toff + p // bs]
            base = ((page*nkv + kvh)*bs + p % bs)*hd
            return lambda d: cache[base + d]
        return f
    stage(k_s, PF_M, qsrc)
    W = []
    for warp in range(4):
        st = {}
        addrs = []
        qf = []
        for kk in range(D // 16):
            ad = [(warp*16 + (L & 7) + ((L >> 3) & 1)*8, kk*16 + (L >> 4)*8) for L in range(32)]
            r = ldmatrix(k_s, ad, False)
            qf.append([[r[i][L] for i in range(4)] for L in range(32)])
        st['qf'] = qf
        st['o'] = [[[0.0]*4 for _ in range(32)] for _ in range(D // 8)]
        st['m'] = [[-math.inf, -math.inf] for _ in range(32)]
        st['l'] = [[0.0, 0.0] for _ in range(32)]
        W.append(st)
    stage(k_s, PF_N, kvsrc(kc, 0))
    t0 = 0
    while t0 < kv_end:
        stage(v_s, PF_N, kvsrc(vc, t0))
        for warp in range(4):
            st = W[warp]
            wf, wl = qpos(warp*16), qpos(warp*16 + 15)
            st['active'] = (warp*16)//hp < nrows and t0 <= wl
            if not st['active']: continue
            s = [[[0.0]*4 for _ in range(32)] for _ in range(PF_N // 8)]
            for kk in range(D // 16):
                for np_ in range(PF_N // 16):
                    ad = [(np_*16 + (L & 7) + (L >> 4)*8, kk*16 + ((L >> 3) & 1)*8) for L in range(32)]
                    b = ldmatrix(k_s, ad, False)
                    mma(s[2*np_], st['qf'][kk], b[0], b[1])
                    mma(s[2*np_+1], st['qf'][kk], b[2], b[3])
            pf = [[None]*32 for _ in range(PF_N // 16)]
            mxs = [None]*32
            for L in range(32):
                g, t = L >> 2, L & 3
                qlo, qhi = qpos(warp*16 + g), qpos(warp*16 + g + 8)
                if t0 + PF_N - 1 > wf:
                    for n in range(PF_N // 8):
                        key = t0 + n*8 + 2*t
                        if key > qlo: s[n][L][0] = -math.inf
                        if key + 1 > qlo: s[n][L][1] = -math.inf
                        if key > qhi: s[n][L][2] = -math.inf
                        if key + 1 > qhi: s[n][L][3] = -math.inf
                mx = list(st['m'][L])
                for n in range(PF_N // 8):
                    mx[0] = max(mx[0], s[n][L][0], s[n][L][1]); mx[1] = max(mx[1], s[n][L][2], s[n][L][3])
                mxs[L] = mx
            # quad shuffles
            for L in range(32):
                quad = [mxs[(L & ~3) | i] for i in range(4)]
                st.setdefault('mx', [None]*32)[L] = [max(x[0] for x in quad), max(x[1] for x in quad)]
            for L in range(32):
                mx = st['mx'][L]
                base = [0.0 if mx[i] == -math.inf else mx[i]*sl2 for i in range(2)]
                corr = [2.0 ** (st['m'][L][i]*sl2 - base[i]) if st['m'][L][i] != -math.inf else 0.0 for i in range(2)]
                st['m'][L] = mx[:]
                st['l'][L] = [st['l'][L][i]*corr[i] for i in range(2)]
                def ex(x, b):
                    return 0.0 if x == -math.inf else 2.0 ** (x*sl2 - b)
                for n in range(PF_N // 8):
                    s[n][L] = [ex(s[n][L][0], base[0]), ex(s[n][L][1], base[0]), ex(s[n][L][2], base[1]), ex(s[n][L][3], base[1])]
                def pack(a, b, i):
                    a, b = bf16(a), bf16(b); st['l'][L][i] += a + b; return (a, b)
                for ks in range(PF_N // 16):
                    pf[ks][L] = [pack(s[2*ks][L][0], s[2*ks][L][1], 0), pack(s[2*ks][L][2], s[2*ks][L][3], 1),
                                 pack(s[2*ks+1][L][0], s[2*ks+1][L][1], 0), pack(s[2*ks+1][L][2], s[2*ks+1][L][3], 1)]
                for n in range(D // 8):
                    o = st['o'][n][L]
                    st['o'][n][L] = [o[0]*corr[0], o[1]*corr[0], o[2]*corr[1], o[3]*corr[1]]
            st['pf'] = pf
        # barrier (B): K buffer reloaded for next tile after all warps read it
        nxt_k = t0 + PF_N < kv_end
        for warp in range(4):
            st = W[warp]
            if not st['active']: continue
            for ks in range(PF_N // 16):
                for dp in range(D // 16):
                    ad = [(ks*16 + (L & 7) + ((L >> 3) & 1)*8, dp*16 + (L >> 4)*8) for L in range(32)]
                    b = ldmatrix(v_s, ad, True)
                    mma(st['o'][2*dp], st['pf'][ks], b[0], b[1])
                    mma(st['o'][2*dp+1], st['pf'][ks], b[2], b[3])
        if nxt_k: stage(k_s, PF_N, kvsrc(kc, t0 + PF_N))
        t0 += PF_N
    for warp in range(4):
        st = W[warp]
        for L in range(32):
            g, t = L >> 2, L & 3
            l = st['l'][(L & ~3)] and None
            lq = [sum(st['l'][(L & ~3) | i][j] for i in range(4)) for j in range(2)]
            for i in range(2):
                m = warp*16 + g + 8*i
                r = m // hp
                if r >= nrows: continue
                base = ((row0 + r)*nh + head0 + m % hp)*hd
                for n in range(D // 8):
                    d = n*8 + 2*t
                    if d < hd: out[base + d] = bf16(st['o'][n][L][2*i] / lq[i])
                    if d + 1 < hd: out[base + d + 1] = bf16(st['o'][n][L][2*i+1] / lq[i])

def reference(q, kc, vc, seqs, tables_list, nh, nkv, hd, bs):
    out = {}
    G = nh // nkv; scale = 1/math.sqrt(hd)
    row = 0
    for (cached, new), table in zip(seqs, tables_list):
        for i in range(new):
            pos = cached + i
            for h in range(nh):
                kvh = h // G
                qv = q[((row)*nh + h)*hd:][:hd]
                sc = []
                for j in range(pos + 1):
                    off = ((table[j // bs]*nkv + kvh)*bs + j % bs)*hd
                    sc.append(sum(a*b for a, b in zip(qv, kc[off:off+hd]))*scale)
                mx = max(sc); w = [math.exp(x - mx) for x in sc]; den = sum(w)
                o = [0.0]*hd
                for j in range(pos + 1):
                    off = ((table[j // bs]*nkv + kvh)*bs + j % bs)*hd
                    for d in range(hd): o[d] += w[j]*vc[off + d]
                for d in range(hd): out[(row*nh + h)*hd + d] = o[d]/den
            row += 1
    return out

def run(nh, nkv, hd, bs, seqs, seed=1):
    rnd = random.Random(seed)
    D = 64 if hd <= 64 else 128
    G = nh // nkv
    hp = max(p for p in range(1, min(8, G) + 1) if G % p == 0)
    rpt = PF_M // hp
    maxctx = max(c + n for c, n in seqs)
    pages = -(-maxctx // bs)
    nblocks = pages*len(seqs) + 3
    kc = [bf16(rnd.uniform(-2, 2)) for _ in range(nblocks*nkv*bs*hd)]
    vc = [bf16(rnd.uniform(-2, 2)) for _ in range(nblocks*nkv*bs*hd)]
    tables_list = [[nblocks - 1 - (s*pages + p) for p in range(pages)] for s in range(len(seqs))]
    rows = sum(n for _, n in seqs)
    q = [bf16(rnd.uniform(-2, 2)) for _ in range(rows*nh*hd)]
    flat, toffs = [], []
    for t in tables_list: toffs.append(len(flat)); flat += t
    tiles = []; start = 0
    for s, (c, n) in enumerate(seqs):
        for t in range(0, n, rpt):
            tiles.append((start + t, min(rpt, n - t), c + t, toffs[s]))
        start += n
    tiles.sort(key=lambda t: -(t[1] + t[2]))
    out = [float('nan')]*(rows*nh*hd)
    kernel(D, q, kc, vc, tiles, flat, out, nh, nkv, hd, bs, hp, 1/math.sqrt(hd), nh // hp)
    ref = reference(q, kc, vc, seqs, tables_list, nh, nkv, hd, bs)
    worst = 0
    for i in range(len(out)):
        e = abs(out[i] - ref[i])
        assert e <= 1e-2*(1 + abs(ref[i])), (i, out[i], ref[i])
        worst = max(worst, e)
    print(f"ok nh={nh} nkv={nkv} hd={hd} bs={bs} seqs={seqs} hp={hp} worst={worst:.2e}")

import sys
cases = {
 'a': (4, 4, 16, 16, [(0, 5)]),
 'b': (8, 1, 16, 16, [(16, 17), (50, 1), (3, 9)]),
 'c': (6, 3, 24, 5, [(0, 70), (2, 1)]),
 'd': (4, 2, 13, 7, [(60, 3), (0, 1)]),
 'e': (2, 2, 72, 16, [(0, 3), (65, 2)]),
 'f': (16, 2, 128, 16, [(0, 20), (70, 1)]),
 'g': (3, 1, 36, 3, [(5, 66), (0, 2)]),
}
for k in sys.argv[1:] or sorted(cases):
    run(*cases[k])
