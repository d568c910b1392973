//! Coverage-guided fuzzing of the protocol parser: `cargo +nightly fuzz run protocol_stream`
//! (from the repository root). The first bytes choose the cut points and limits, the rest
//! is the stream; the check is the one the property test runs (tests/protocol_fuzz.rs).
#![no_main]

use asyncthink::asyncthink::protocol::{
    ProtocolLimits, ProtocolTags, check_incremental_agrees_with_offline,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let cut_bytes = usize::from(head % 8).min(rest.len());
    let (cut_seed, stream) = rest.split_at(cut_bytes);
    let text = String::from_utf8_lossy(stream);
    let cuts: Vec<usize> = cut_seed
        .iter()
        .map(|&b| usize::from(b) * text.len() / 255)
        .collect();
    let limits = if head & 0x80 != 0 {
        ProtocolLimits {
            capacity: 2,
            max_forks: 2,
            max_tag_bytes: 8,
            max_total_bytes: 64,
        }
    } else {
        ProtocolLimits::with_capacity(3)
    };
    if let Err(e) =
        check_incremental_agrees_with_offline(&text, &cuts, &ProtocolTags::default(), &limits)
    {
        panic!("{e}");
    }
});
