//! Memory counters a performance engineer reads in Nsight Compute, computed from the exact
//! addresses every lane used. Threads run one at a time here, so a warp's request is
//! rebuilt afterwards: the k-th execution of one memory instruction by the lanes of one
//! warp is one request, as it is on hardware when the warp is converged.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    GlobalLoad,
    GlobalStore,
    SharedLoad,
    SharedStore,
}

/// One lane's part of a memory request.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub warp: u32,
    /// Index of the memory instruction in the kernel.
    pub pc: u32,
    /// How many times this lane had executed it before.
    pub occurrence: u32,
    pub kind: Kind,
    pub lane: u32,
    pub addr: u64,
    pub bytes: u32,
}

/// Per launch. Field names follow the Nsight Compute metrics they correspond to
/// (docs/emulator.md has the table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// `smsp__inst_executed`-like, but per thread: thread-instructions executed.
    pub thread_instructions: u64,
    /// `l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum`
    pub global_load_requests: u64,
    /// `l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum`
    pub global_load_sectors: u64,
    /// Distinct bytes the requests asked for (a broadcast counts once).
    pub global_load_bytes: u64,
    pub global_store_requests: u64,
    pub global_store_sectors: u64,
    pub global_store_bytes: u64,
    /// `l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum` and `_op_st`.
    pub shared_load_requests: u64,
    pub shared_load_wavefronts: u64,
    pub shared_store_requests: u64,
    pub shared_store_wavefronts: u64,
    /// `l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum`: wavefronts beyond the fewest
    /// the request's bytes need.
    pub shared_bank_conflicts: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.thread_instructions += o.thread_instructions;
        self.global_load_requests += o.global_load_requests;
        self.global_load_sectors += o.global_load_sectors;
        self.global_load_bytes += o.global_load_bytes;
        self.global_store_requests += o.global_store_requests;
        self.global_store_sectors += o.global_store_sectors;
        self.global_store_bytes += o.global_store_bytes;
        self.shared_load_requests += o.shared_load_requests;
        self.shared_load_wavefronts += o.shared_load_wavefronts;
        self.shared_store_requests += o.shared_store_requests;
        self.shared_store_wavefronts += o.shared_store_wavefronts;
        self.shared_bank_conflicts += o.shared_bank_conflicts;
    }

    /// Bytes asked for per byte of sector moved: 1.0 is perfectly coalesced.
    pub fn global_load_efficiency(&self) -> f64 {
        self.global_load_bytes as f64 / (32 * self.global_load_sectors).max(1) as f64
    }

    pub fn global_store_efficiency(&self) -> f64 {
        self.global_store_bytes as f64 / (32 * self.global_store_sectors).max(1) as f64
    }
}

/// Distinct 32-byte sectors a request touches.
fn sectors(lanes: &[Access]) -> u64 {
    let mut s: Vec<u64> = lanes
        .iter()
        .flat_map(|a| (a.addr / 32)..=((a.addr + a.bytes as u64 - 1) / 32))
        .collect();
    s.sort_unstable();
    s.dedup();
    s.len() as u64
}

/// Bytes a request asks for, each counted once however many lanes ask for it (a broadcast
/// of one word is 4 bytes), so efficiency never exceeds 1.
fn distinct_bytes(lanes: &[Access]) -> u64 {
    let mut r: Vec<(u64, u64)> = lanes
        .iter()
        .map(|a| (a.addr, a.addr + a.bytes as u64))
        .collect();
    r.sort_unstable();
    let (mut total, mut end) = (0u64, 0u64);
    for (s, e) in r {
        let s = s.max(end);
        if e > s {
            total += e - s;
            end = e;
        }
    }
    total
}

/// Shared-memory wavefronts of one request: 32 banks of 4 bytes; a bank serves one 4-byte
/// word per wavefront (lanes reading the same word share it). 8- and 16-byte accesses are
/// served half and quarter of a warp at a time, as the hardware splits them.
fn wavefronts(lanes: &[Access]) -> (u64, u64) {
    let width = lanes.iter().map(|a| a.bytes).max().unwrap_or(4);
    let lanes_per_phase = match width {
        16 => 8,
        8 => 16,
        _ => 32,
    };
    let mut total = 0u64;
    let mut ideal = 0u64;
    for phase in 0..32 / lanes_per_phase {
        let in_phase: Vec<&Access> = lanes
            .iter()
            .filter(|a| a.lane / lanes_per_phase == phase)
            .collect();
        if in_phase.is_empty() {
            continue;
        }
        let mut words: Vec<u64> = in_phase
            .iter()
            .flat_map(|a| (a.addr / 4)..(a.addr + a.bytes as u64).div_ceil(4))
            .collect();
        words.sort_unstable();
        words.dedup();
        let mut per_bank = [0u64; 32];
        for w in &words {
            per_bank[(w % 32) as usize] += 1;
        }
        total += per_bank.iter().copied().max().unwrap_or(0).max(1);
        ideal += (words.len() as u64).div_ceil(32).max(1);
    }
    (total, total - ideal.min(total))
}

/// Folds one block's lane accesses into requests and counts them.
pub fn count(accesses: &mut [Access], c: &mut Counters) {
    accesses.sort_unstable_by_key(|a| (a.warp, a.pc, a.occurrence, a.kind, a.lane));
    let mut groups: BTreeMap<(u32, u32, u32, Kind), Vec<Access>> = BTreeMap::new();
    for a in accesses.iter() {
        groups
            .entry((a.warp, a.pc, a.occurrence, a.kind))
            .or_default()
            .push(*a);
    }
    for ((.., kind), lanes) in groups {
        let bytes = distinct_bytes(&lanes);
        match kind {
            Kind::GlobalLoad => {
                c.global_load_requests += 1;
                c.global_load_sectors += sectors(&lanes);
                c.global_load_bytes += bytes;
            }
            Kind::GlobalStore => {
                c.global_store_requests += 1;
                c.global_store_sectors += sectors(&lanes);
                c.global_store_bytes += bytes;
            }
            Kind::SharedLoad | Kind::SharedStore => {
                let (w, conflicts) = wavefronts(&lanes);
                if kind == Kind::SharedLoad {
                    c.shared_load_requests += 1;
                    c.shared_load_wavefronts += w;
                } else {
                    c.shared_store_requests += 1;
                    c.shared_store_wavefronts += w;
                }
                c.shared_bank_conflicts += conflicts;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: Kind, addrs: impl Iterator<Item = u64>, bytes: u32) -> Vec<Access> {
        addrs
            .enumerate()
            .map(|(lane, addr)| Access {
                warp: 0,
                pc: 0,
                occurrence: 0,
                kind,
                lane: lane as u32,
                addr,
                bytes,
            })
            .collect()
    }

    #[test]
    fn coalesced_and_strided_global_loads() {
        let mut c = Counters::default();
        count(
            &mut req(Kind::GlobalLoad, (0..32).map(|l| 4096 + 4 * l), 4),
            &mut c,
        );
        assert_eq!((c.global_load_requests, c.global_load_sectors), (1, 4));
        assert_eq!(c.global_load_efficiency(), 1.0);
        let mut c = Counters::default();
        count(
            &mut req(Kind::GlobalLoad, (0..32).map(|l| 4096 + 128 * l), 4),
            &mut c,
        );
        assert_eq!(c.global_load_sectors, 32);
        assert_eq!(c.global_load_efficiency(), 0.125);
        // A broadcast: one word for the whole warp is one sector, 4 useful bytes of 32.
        let mut c = Counters::default();
        count(&mut req(Kind::GlobalLoad, (0..32).map(|_| 4096), 4), &mut c);
        assert_eq!((c.global_load_sectors, c.global_load_bytes), (1, 4));
    }

    #[test]
    fn bank_conflicts() {
        // Consecutive words: one wavefront, no conflict.
        let mut c = Counters::default();
        count(
            &mut req(Kind::SharedLoad, (0..32).map(|l| 4 * l), 4),
            &mut c,
        );
        assert_eq!((c.shared_load_wavefronts, c.shared_bank_conflicts), (1, 0));
        // A stride of 32 words puts every lane in bank 0: 32 wavefronts, 31 conflicts.
        let mut c = Counters::default();
        count(
            &mut req(Kind::SharedLoad, (0..32).map(|l| 128 * l), 4),
            &mut c,
        );
        assert_eq!(
            (c.shared_load_wavefronts, c.shared_bank_conflicts),
            (32, 31)
        );
        // Everyone reading one word is a broadcast.
        let mut c = Counters::default();
        count(&mut req(Kind::SharedLoad, (0..32).map(|_| 64), 4), &mut c);
        assert_eq!(c.shared_bank_conflicts, 0);
        // 16-byte loads of consecutive rows: four quarter-warp wavefronts, no conflict.
        let mut c = Counters::default();
        count(
            &mut req(Kind::SharedLoad, (0..32).map(|l| 16 * l), 16),
            &mut c,
        );
        assert_eq!((c.shared_load_wavefronts, c.shared_bank_conflicts), (4, 0));
    }
}
