//! Finding the vDSO in a process and the entry points in it.
//!
//! The vDSO is a small ELF shared object the kernel maps into every process (`[vdso]` in
//! `/proc/PID/maps`); its `.dynsym` names the functions libc and Go call. The image is read
//! from the target's own memory, so it is the exact code the target runs.

use std::io;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    /// The path or the `[name]`; empty for anonymous memory.
    pub name: String,
}

pub fn maps(pid: u32) -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(parse_maps(&text))
}

pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.to_owned();
            let name = fields.nth(3).unwrap_or("").trim().to_owned();
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                perms,
                name,
            })
        })
        .collect()
}

/// A function in the vDSO: its offset from the start of the image, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("the vDSO image is not a 64-bit little-endian ELF object")]
    NotElf,
    #[error("the vDSO image is cut short ({what} lies outside its {len} bytes)")]
    Truncated { what: &'static str, len: usize },
    #[error("the vDSO has no .dynsym section")]
    NoDynsym,
    #[error("the vDSO does not export {0}")]
    Missing(String),
}

const SHT_DYNSYM: u32 = 11;
const PT_LOAD: u32 = 1;
const STT_FUNC: u8 = 2;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Looks `name` up in the image's `.dynsym` (a function symbol, defined).
pub fn symbol(image: &[u8], name: &str) -> Result<Symbol, ElfError> {
    let short = |what| ElfError::Truncated {
        what,
        len: image.len(),
    };
    // e_ident: magic, ELFCLASS64 (2), ELFDATA2LSB (1)
    if image.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(ElfError::NotElf);
    }
    let phoff = u64_at(image, 0x20).ok_or(short("e_phoff"))? as usize;
    let shoff = u64_at(image, 0x28).ok_or(short("e_shoff"))? as usize;
    let phentsize = usize::from(u16_at(image, 0x36).ok_or(short("e_phentsize"))?);
    let phnum = usize::from(u16_at(image, 0x38).ok_or(short("e_phnum"))?);
    let shentsize = usize::from(u16_at(image, 0x3a).ok_or(short("e_shentsize"))?);
    let shnum = usize::from(u16_at(image, 0x3c).ok_or(short("e_shnum"))?);

    // Symbol values are virtual addresses; the image starts at the first PT_LOAD's.
    let mut load = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(image, ph).ok_or(short("a program header"))? == PT_LOAD {
            load = u64_at(image, ph + 0x10).ok_or(short("p_vaddr"))?;
            break;
        }
    }

    let section = |i: usize| -> Result<(u32, u32, usize, usize, usize), ElfError> {
        let sh = shoff + i * shentsize;
        let kind = u32_at(image, sh + 4).ok_or(short("a section header"))?;
        let link = u32_at(image, sh + 0x28).ok_or(short("sh_link"))?;
        let offset = u64_at(image, sh + 0x18).ok_or(short("sh_offset"))? as usize;
        let size = u64_at(image, sh + 0x20).ok_or(short("sh_size"))? as usize;
        let entsize = u64_at(image, sh + 0x38).ok_or(short("sh_entsize"))? as usize;
        Ok((kind, link, offset, size, entsize))
    };
    for i in 0..shnum {
        let (kind, link, symoff, symsize, entsize) = section(i)?;
        if kind != SHT_DYNSYM {
            continue;
        }
        let entsize = if entsize == 0 { 24 } else { entsize };
        let (_, _, stroff, strsize, _) = section(link as usize)?;
        let strings = image
            .get(stroff..stroff + strsize)
            .ok_or(short(".dynstr"))?;
        for k in 0..symsize / entsize {
            let sym = symoff + k * entsize;
            let st_name = u32_at(image, sym).ok_or(short(".dynsym"))? as usize;
            let st_info = *image.get(sym + 4).ok_or(short(".dynsym"))?;
            let st_shndx = u16_at(image, sym + 6).ok_or(short(".dynsym"))?;
            let st_value = u64_at(image, sym + 8).ok_or(short(".dynsym"))?;
            let st_size = u64_at(image, sym + 16).ok_or(short(".dynsym"))?;
            let sym_name = strings
                .get(st_name..)
                .and_then(|s| s.split(|&b| b == 0).next())
                .unwrap_or_default();
            if sym_name == name.as_bytes() && st_info & 0xf == STT_FUNC && st_shndx != 0 {
                return Ok(Symbol {
                    offset: st_value.wrapping_sub(load),
                    size: st_size,
                });
            }
        }
        return Err(ElfError::Missing(name.to_owned()));
    }
    Err(ElfError::NoDynsym)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::layout::ENTRY_NAMES;

    /// This test process's own vDSO, read from its memory.
    pub(crate) fn own_vdso() -> (u64, Vec<u8>) {
        let maps = maps(std::process::id()).expect("read own maps");
        let vdso = maps
            .iter()
            .find(|m| m.name == "[vdso]")
            .expect("this process has a vDSO");
        let len = (vdso.end - vdso.start) as usize;
        // SAFETY: the vDSO mapping is readable for its whole length in this process.
        let bytes = unsafe { std::slice::from_raw_parts(vdso.start as *const u8, len) }.to_vec();
        (vdso.start, bytes)
    }

    #[test]
    fn finds_the_clock_entry_points_in_our_own_vdso() {
        let (start, image) = own_vdso();
        for name in ENTRY_NAMES {
            let sym = symbol(&image, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                sym.offset > 0 && sym.offset + sym.size <= image.len() as u64,
                "{name} at {sym:?} inside the {} byte image",
                image.len()
            );
        }
        // SAFETY: getauxval has no preconditions.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        assert_eq!(base, start, "AT_SYSINFO_EHDR is the [vdso] mapping");
        let cgt = symbol(&image, "__vdso_clock_gettime").unwrap();
        assert!(cgt.size > 16, "clock_gettime is a real function: {cgt:?}");
    }

    #[test]
    fn refuses_what_is_not_a_vdso() {
        assert_eq!(symbol(b"not an elf", "x"), Err(ElfError::NotElf));
        let (_, image) = own_vdso();
        assert_eq!(
            symbol(&image, "__vdso_nonexistent"),
            Err(ElfError::Missing("__vdso_nonexistent".into()))
        );
        let cut = &image[..0x80];
        assert!(matches!(
            symbol(cut, "__vdso_time"),
            Err(ElfError::Truncated { .. })
        ));
    }

    #[test]
    fn parses_maps_lines() {
        let text = "7fc40f982000-7fc40f986000 r--p 00000000 00:00 0                          [vvar]\n\
                    7fc40f988000-7fc40f98a000 r-xp 00000000 00:00 0      [vdso]\n\
                    55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0 \n\
                    7f0000000000-7f0000003000 r--s 00000000 00:01 1234   /memfd:fault-clock (deleted)\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].start, 0x7fc40f988000);
        assert_eq!(m[1].name, "[vdso]");
        assert_eq!(m[2].name, "");
        assert_eq!(m[3].name, "/memfd:fault-clock (deleted)");
        assert_eq!(m[3].perms, "r--s");
    }
}
