//! Global memory as the blocks of one launch see it. Blocks are unordered on hardware, so
//! every block here reads the memory as it was when the launch began plus its own writes,
//! and its writes land when the launch ends. That makes the result independent of how many
//! blocks run at once, and a byte two blocks both write is a race the launch reports:
//! which value survives would depend on scheduling.

use std::collections::HashMap;

use crate::memory::GlobalMemory;

/// Writes are kept in aligned 16-byte granules: the widest store (`st.v4.b32`) fills one.
const GRANULE: u64 = 16;

#[derive(Debug, Clone, Copy)]
struct Granule {
    data: [u8; GRANULE as usize],
    /// Which bytes of `data` were written.
    mask: u16,
    /// The last writer, for a race report: linear thread index and PTX line.
    thread: u32,
    line: u32,
}

/// One block's writes, not yet visible to other blocks.
#[derive(Debug, Default)]
pub struct BlockWrites {
    granules: HashMap<u64, Granule>,
    /// The written address range, so reads elsewhere skip the lookup.
    lo: u64,
    hi: u64,
}

/// What a block reads and writes through.
pub struct BlockGlobal<'a> {
    pub base: &'a GlobalMemory,
    pub writes: BlockWrites,
}

impl<'a> BlockGlobal<'a> {
    pub fn new(base: &'a GlobalMemory) -> Self {
        BlockGlobal {
            base,
            writes: BlockWrites::default(),
        }
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), String> {
        self.base.read(addr, out)?;
        let w = &self.writes;
        let end = addr + out.len() as u64;
        if w.granules.is_empty() || end <= w.lo || addr >= w.hi {
            return Ok(());
        }
        for (key, range) in segments(addr, out.len()) {
            if let Some(g) = w.granules.get(&key) {
                let first = ((addr + range.start as u64) % GRANULE) as usize;
                for (i, byte) in out[range].iter_mut().enumerate() {
                    if g.mask & (1 << (first + i)) != 0 {
                        *byte = g.data[first + i];
                    }
                }
            }
        }
        Ok(())
    }

    /// Records a write by `thread` at PTX `line`, checked against the live allocations.
    pub fn write(&mut self, addr: u64, data: &[u8], thread: u32, line: u32) -> Result<(), String> {
        self.base.check(addr, data.len())?;
        let w = &mut self.writes;
        if w.granules.is_empty() {
            (w.lo, w.hi) = (addr, addr);
        }
        w.lo = w.lo.min(addr);
        w.hi = w.hi.max(addr + data.len() as u64);
        for (key, range) in segments(addr, data.len()) {
            let g = w.granules.entry(key).or_insert(Granule {
                data: [0; GRANULE as usize],
                mask: 0,
                thread,
                line,
            });
            let first = ((addr + range.start as u64) % GRANULE) as usize;
            let n = range.len();
            g.data[first..first + n].copy_from_slice(&data[range]);
            g.mask |= (((1u32 << n) - 1) << first) as u16;
            g.thread = thread;
            g.line = line;
        }
        Ok(())
    }
}

/// The granules `[addr, addr+len)` touches, each with the part of the access inside it.
fn segments(addr: u64, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let end = addr + len as u64;
    (addr / GRANULE..end.div_ceil(GRANULE)).map(move |key| {
        let lo = (key * GRANULE).max(addr);
        let hi = ((key + 1) * GRANULE).min(end);
        (key, (lo - addr) as usize..(hi - addr) as usize)
    })
}

/// Two blocks wrote the same bytes of global memory in one launch.
#[derive(Debug)]
pub struct Race {
    pub addr: u64,
    pub first: (u64, u32, u32),
    pub second: (u64, u32, u32),
}

/// The writes of a whole launch, merged block by block in launch order.
#[derive(Debug, Default)]
pub struct LaunchWrites {
    granules: HashMap<u64, (Granule, u64)>,
}

impl LaunchWrites {
    /// Adds block `block`'s writes; a byte an earlier block also wrote is a race.
    pub fn merge(&mut self, block: u64, writes: BlockWrites) -> Result<(), Race> {
        for (key, g) in writes.granules {
            match self.granules.get_mut(&key) {
                None => {
                    self.granules.insert(key, (g, block));
                }
                Some((have, owner)) => {
                    let both = have.mask & g.mask;
                    if both != 0 {
                        return Err(Race {
                            addr: key * GRANULE + both.trailing_zeros() as u64,
                            first: (*owner, have.thread, have.line),
                            second: (block, g.thread, g.line),
                        });
                    }
                    for bit in 0..GRANULE as usize {
                        if g.mask & (1 << bit) != 0 {
                            have.data[bit] = g.data[bit];
                        }
                    }
                    have.mask |= g.mask;
                    (*owner, have.thread, have.line) = (block, g.thread, g.line);
                }
            }
        }
        Ok(())
    }

    /// Makes the launch's writes visible.
    pub fn apply(self, mem: &mut GlobalMemory) -> Result<(), String> {
        for (key, (g, _)) in self.granules {
            if g.mask == u16::MAX {
                mem.write(key * GRANULE, &g.data)?;
                continue;
            }
            for bit in 0..GRANULE as usize {
                if g.mask & (1 << bit) != 0 {
                    mem.write(key * GRANULE + bit as u64, &g.data[bit..bit + 1])?;
                }
            }
        }
        Ok(())
    }
}
