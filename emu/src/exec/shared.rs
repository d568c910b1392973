//! A block's shared memory with a shadow per byte: who wrote it and who read it since the
//! last barrier, and whether a `cp.async` into it is still in flight. That is enough to
//! report every pair of conflicting accesses with no barrier between them.

/// Who touched a byte in the current barrier interval. Epoch 0 is "never".
#[derive(Debug, Clone, Copy, Default)]
struct Shadow {
    w_epoch: u32,
    w_thread: u32,
    r_epoch: u32,
    /// `MANY` once two different threads read it in one interval.
    r_thread: u32,
    /// The thread whose `cp.async` into this byte has not been waited for, plus one.
    pending: u32,
}

const MANY: u32 = u32::MAX;

pub struct SharedMemory {
    pub bytes: Vec<u8>,
    shadow: Vec<Shadow>,
    /// Advanced by every `bar.sync` the whole block passes.
    pub epoch: u32,
}

impl SharedMemory {
    pub fn new(size: usize) -> Self {
        SharedMemory {
            bytes: vec![0; size],
            shadow: vec![Shadow::default(); size],
            epoch: 1,
        }
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, String> {
        let end = addr
            .checked_add(len as u64)
            .filter(|&e| e <= self.bytes.len() as u64);
        match end {
            Some(e) => Ok(addr as usize..e as usize),
            None => Err(format!(
                "{len}-byte shared-memory access at offset {addr:#x} is outside the block's {} bytes of shared memory",
                self.bytes.len()
            )),
        }
    }

    pub fn read(&mut self, thread: u32, addr: u64, out: &mut [u8]) -> Result<(), String> {
        let r = self.range(addr, out.len())?;
        let epoch = self.epoch;
        for i in r.clone() {
            let s = &mut self.shadow[i];
            if s.pending != 0 {
                return Err(format!(
                    "reads shared byte {i:#x} while thread {}'s cp.async into it is still in flight \
                     (no cp.async.wait_group has completed it)",
                    s.pending - 1
                ));
            }
            if s.w_epoch == epoch && s.w_thread != thread {
                return Err(format!(
                    "race: reads shared byte {i:#x} written by thread {} with no barrier between",
                    s.w_thread
                ));
            }
            if s.r_epoch != epoch {
                s.r_epoch = epoch;
                s.r_thread = thread;
            } else if s.r_thread != thread {
                s.r_thread = MANY;
            }
        }
        out.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    pub fn write(&mut self, thread: u32, addr: u64, data: &[u8]) -> Result<(), String> {
        let r = self.range(addr, data.len())?;
        self.check_write(thread, r.clone())?;
        for i in r.clone() {
            let s = &mut self.shadow[i];
            s.w_epoch = self.epoch;
            s.w_thread = thread;
        }
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }

    fn check_write(&self, thread: u32, r: std::ops::Range<usize>) -> Result<(), String> {
        for i in r {
            let s = &self.shadow[i];
            if s.pending != 0 {
                return Err(format!(
                    "writes shared byte {i:#x} while thread {}'s cp.async into it is in flight \
                     (the store and the copy land in an undefined order)",
                    s.pending - 1
                ));
            }
            if s.w_epoch == self.epoch && s.w_thread != thread {
                return Err(format!(
                    "race: writes shared byte {i:#x} also written by thread {} with no barrier between",
                    s.w_thread
                ));
            }
            if s.r_epoch == self.epoch && s.r_thread != thread {
                let who = if s.r_thread == MANY {
                    "other threads".to_string()
                } else {
                    format!("thread {}", s.r_thread)
                };
                return Err(format!(
                    "race: writes shared byte {i:#x} read by {who} with no barrier between"
                ));
            }
        }
        Ok(())
    }

    /// A `cp.async` issued: its destination is off limits until it lands.
    pub fn mark_pending(&mut self, thread: u32, addr: u64, len: usize) -> Result<(), String> {
        let r = self.range(addr, len)?;
        self.check_write(thread, r.clone())?;
        for i in r {
            self.shadow[i].pending = thread + 1;
        }
        Ok(())
    }

    /// A waited-for `cp.async` lands: a write by the issuing thread, now.
    pub fn land(&mut self, thread: u32, addr: u64, data: &[u8]) -> Result<(), String> {
        let r = self.range(addr, data.len())?;
        for i in r {
            self.shadow[i].pending = 0;
        }
        self.write(thread, addr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_between_barriers_are_races() {
        let mut s = SharedMemory::new(16);
        s.write(0, 0, &[1, 2, 3, 4]).unwrap();
        s.write(0, 0, &[1]).unwrap(); // the same thread may rewrite its own bytes
        let mut b = [0u8; 4];
        assert!(s.read(1, 0, &mut b).unwrap_err().contains("race"));
        s.epoch += 1;
        s.read(1, 0, &mut b).unwrap();
        s.read(2, 0, &mut b).unwrap();
        assert!(
            s.write(0, 2, &[9])
                .unwrap_err()
                .contains("read by other threads")
        );
        assert!(s.read(0, 14, &mut b).unwrap_err().contains("outside"));
    }

    #[test]
    fn cp_async_data_is_off_limits_until_it_lands() {
        let mut s = SharedMemory::new(32);
        s.mark_pending(3, 16, 16).unwrap();
        let mut b = [0u8; 4];
        assert!(s.read(3, 16, &mut b).unwrap_err().contains("in flight"));
        s.land(3, 16, &[7; 16]).unwrap();
        s.read(3, 16, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
    }
}
