//! Moving the first instructions of a vDSO function elsewhere (the trampoline), so the
//! function can still be called after its first bytes are overwritten by a jump.
//!
//! Whole instructions are copied until at least 5 bytes (a `jmp rel32`) are covered, each
//! re-encoded for its new address: RIP-relative operands (the vDSO reaches its data pages
//! that way, e.g. `lea r10, [rip-0x6818]`) keep pointing at the same target. A jump back to
//! the first instruction not copied follows. Each copy keeps its length, so a thread caught
//! between two of the moved instructions can be moved to the same offset in the trampoline.

use iced_x86::{Decoder, DecoderOptions, Encoder, FlowControl, Instruction};

/// The bytes a `jmp rel32` takes.
pub const JMP_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trampoline {
    pub code: Vec<u8>,
    /// How many bytes of the function it replaces (whole instructions, at least 5).
    pub stolen: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelocError {
    #[error("the function is shorter than a jump ({0} bytes)")]
    TooShort(usize),
    #[error("cannot decode the instruction at +{0:#x}")]
    Undecodable(usize),
    #[error("the prologue holds a branch at +{offset:#x} ({text}), which cannot move")]
    Branch { offset: usize, text: String },
    #[error("a branch at +{from:#x} lands inside the first {stolen} bytes (at +{to:#x})")]
    BranchInto {
        from: usize,
        to: usize,
        stolen: usize,
    },
    #[error("`{text}` cannot be re-encoded {distance:#x} bytes away: {reason}")]
    Encode {
        text: String,
        distance: i64,
        reason: String,
    },
    #[error("`{text}` changes length when moved ({from} -> {to} bytes)")]
    LengthChanged {
        text: String,
        from: usize,
        to: usize,
    },
    #[error("the trampoline is more than 2 GiB from the function")]
    TooFar,
}

fn text(instr: &Instruction) -> String {
    instr.to_string()
}

/// Builds the trampoline for the function whose bytes are `func`, found at `entry` in the
/// target, to be placed at `at`; at most `room` bytes long.
pub fn relocate(func: &[u8], entry: u64, at: u64, room: usize) -> Result<Trampoline, RelocError> {
    if func.len() < JMP_LEN {
        return Err(RelocError::TooShort(func.len()));
    }
    let mut decoder = Decoder::with_ip(64, func, entry, DecoderOptions::NONE);
    let all: Vec<Instruction> = decoder.iter().collect();
    let mut code = Vec::new();
    let mut stolen = 0;
    for instr in &all {
        if stolen >= JMP_LEN {
            break;
        }
        if instr.is_invalid() {
            return Err(RelocError::Undecodable(stolen));
        }
        if instr.flow_control() != FlowControl::Next {
            return Err(RelocError::Branch {
                offset: stolen,
                text: text(instr),
            });
        }
        let new_ip = at + code.len() as u64;
        let mut encoder = Encoder::new(64);
        let len = encoder
            .encode(instr, new_ip)
            .map_err(|e| RelocError::Encode {
                text: text(instr),
                distance: new_ip.wrapping_sub(instr.ip()) as i64,
                reason: e.to_string(),
            })?;
        if len != instr.len() {
            return Err(RelocError::LengthChanged {
                text: text(instr),
                from: instr.len(),
                to: len,
            });
        }
        code.extend(encoder.take_buffer());
        stolen += instr.len();
    }
    if stolen < JMP_LEN {
        return Err(RelocError::TooShort(stolen));
    }
    // Nothing in the function may jump back into what is being replaced: it would land in
    // the middle of our jump.
    for instr in &all {
        if instr.is_invalid() {
            break;
        }
        let target = instr.near_branch_target();
        if target > entry && target < entry + stolen as u64 {
            return Err(RelocError::BranchInto {
                from: (instr.ip() - entry) as usize,
                to: (target - entry) as usize,
                stolen,
            });
        }
    }
    let back = entry + stolen as u64;
    let from = at + code.len() as u64 + JMP_LEN as u64;
    let rel = i32::try_from(back.wrapping_sub(from) as i64).map_err(|_| RelocError::TooFar)?;
    code.push(0xe9);
    code.extend(rel.to_le_bytes());
    if code.len() > room {
        return Err(RelocError::Encode {
            text: format!("{stolen} bytes of prologue"),
            distance: 0,
            reason: format!(
                "the trampoline takes {} bytes, more than {room}",
                code.len()
            ),
        });
    }
    Ok(Trampoline { code, stolen })
}

/// `jmp rel32` from `from` to `to`, as the 5 bytes to write at `from`.
pub fn jmp_rel32(from: u64, to: u64) -> Option<[u8; 5]> {
    let rel = i32::try_from(to.wrapping_sub(from + JMP_LEN as u64) as i64).ok()?;
    let r = rel.to_le_bytes();
    Some([0xe9, r[0], r[1], r[2], r[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::layout::{ENTRY_NAMES, TRAMP_SLOT};
    use crate::clock::vdso;
    use iced_x86::{Mnemonic, OpKind};

    fn decode_all(code: &[u8], ip: u64) -> Vec<Instruction> {
        Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
            .iter()
            .collect()
    }

    /// The real prologues of this machine's vDSO, moved 1 MiB below it, still do the same
    /// thing: same instructions, same memory targets, and a jump back to the rest.
    #[test]
    fn relocates_the_real_vdso_prologues() {
        let maps = vdso::maps(std::process::id()).unwrap();
        let v = maps.iter().find(|m| m.name == "[vdso]").unwrap();
        // SAFETY: the vDSO mapping is readable for its whole length in this process.
        let image =
            unsafe { std::slice::from_raw_parts(v.start as *const u8, (v.end - v.start) as usize) };
        for (i, name) in ENTRY_NAMES.iter().enumerate() {
            let sym = vdso::symbol(image, name).unwrap();
            let entry = v.start + sym.offset;
            let func = &image[sym.offset as usize..(sym.offset + sym.size) as usize];
            let at = v.start - 0x10_0000 + (i * TRAMP_SLOT) as u64;
            let t = relocate(func, entry, at, TRAMP_SLOT).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(t.stolen >= JMP_LEN, "{name}: {t:?}");
            let original = decode_all(&func[..t.stolen], entry);
            let moved = decode_all(&t.code, at);
            assert_eq!(
                moved.len(),
                original.len() + 1,
                "{name}: plus the jump back"
            );
            for (o, m) in original.iter().zip(&moved) {
                assert_eq!(o.mnemonic(), m.mnemonic(), "{name}");
                assert_eq!(o.len(), m.len(), "{name}: same length");
                assert_eq!(m.ip() - at, o.ip() - entry, "{name}: same offset");
                for k in 0..o.op_count() {
                    if o.op_kind(k) == OpKind::Memory && o.is_ip_rel_memory_operand() {
                        assert_eq!(
                            o.ip_rel_memory_address(),
                            m.ip_rel_memory_address(),
                            "{name}: `{}` reaches the same address",
                            text(o)
                        );
                    }
                }
            }
            let jmp = moved.last().unwrap();
            assert_eq!(jmp.mnemonic(), Mnemonic::Jmp);
            assert_eq!(jmp.near_branch_target(), entry + t.stolen as u64);
        }
    }

    #[test]
    fn refuses_a_branch_in_the_prologue() {
        // jmp +0 ; nop...
        let func = [0xeb, 0x00, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90];
        let err = relocate(&func, 0x1000, 0x2000, 64).unwrap_err();
        assert!(matches!(err, RelocError::Branch { offset: 0, .. }), "{err}");
        // push rbp; mov rbp, rsp; push rbx; ... ; jne back to +1
        let func = [0x55, 0x48, 0x89, 0xe5, 0x53, 0x90, 0x75, 0xf9];
        let err = relocate(&func, 0x1000, 0x2000, 64).unwrap_err();
        assert!(matches!(err, RelocError::BranchInto { to: 1, .. }), "{err}");
    }

    #[test]
    fn rip_relative_out_of_reach_is_refused() {
        // lea r10, [rip+0]; nop; nop
        let func = [0x4c, 0x8d, 0x15, 0, 0, 0, 0, 0x90, 0x90];
        let err = relocate(&func, 0x1000, 0x1_0000_0000_0000, 64).unwrap_err();
        assert!(matches!(err, RelocError::Encode { .. }), "{err}");
        let ok = relocate(&func, 0x1000, 0x9000, 64).unwrap();
        assert_eq!(ok.stolen, 7);
    }

    #[test]
    fn jumps_are_relative_to_their_end() {
        assert_eq!(jmp_rel32(0x1000, 0x1005), Some([0xe9, 0, 0, 0, 0]));
        assert_eq!(
            jmp_rel32(0x1000, 0x1000),
            Some([0xe9, 0xfb, 0xff, 0xff, 0xff])
        );
        assert_eq!(jmp_rel32(0, 0x1_0000_0000), None);
    }
}
