//! Byte-level walks over DNS messages that the server side needs around the answer function:
//! where the question ends, where the OPT record is, and which options it carries. Pure and
//! bounds-checked: a malformed message gives `None`, never a panic.

/// The OPT record's type.
const TYPE_OPT: u16 = 41;
/// The EDNS option code of DNS cookies (RFC 7873).
pub const OPTION_COOKIE: u16 = 10;

/// The offset just past the name starting at `at` (labels, ending in a root label or a
/// compression pointer).
pub fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                message.get(at + 1)?;
                return Some(at + 2);
            }
            l if l & 0xc0 == 0 => at += usize::from(l) + 1,
            _ => return None,
        }
    }
}

/// The offset just past the question section (one question or none).
pub fn question_end(message: &[u8]) -> Option<usize> {
    let questions = u16::from_be_bytes([*message.get(4)?, *message.get(5)?]);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    (at <= message.len()).then_some(at)
}

/// The first question's name (as text, absolute) and type, for logs.
pub fn question(message: &[u8]) -> Option<(String, u16)> {
    if u16::from_be_bytes([*message.get(4)?, *message.get(5)?]) == 0 {
        return None;
    }
    let mut name = String::new();
    let mut at = 12;
    loop {
        let len = usize::from(*message.get(at)?);
        match len {
            0 => break,
            l if l & 0xc0 != 0 => return None,
            l => {
                let label = message.get(at + 1..at + 1 + l)?;
                // Printable ASCII as is, anything else escaped as \DDD (RFC 1035 §5.1).
                for &b in label {
                    match b {
                        b'.' | b'\\' => {
                            name.push('\\');
                            name.push(char::from(b));
                        }
                        0x21..=0x7e => name.push(char::from(b)),
                        _ => name.push_str(&format!("\\{b:03}")),
                    }
                }
                name.push('.');
                at += l + 1;
            }
        }
    }
    if name.is_empty() {
        name.push('.');
    }
    let qtype = u16::from_be_bytes([*message.get(at + 1)?, *message.get(at + 2)?]);
    Some((name, qtype))
}

/// The header and question of `message` with every record dropped (the section counts at
/// zero): what a FORMERR or a truncated stand-in keeps of a reply.
pub fn header_and_question(mut message: Vec<u8>) -> Vec<u8> {
    let end = question_end(&message).unwrap_or(12).min(message.len());
    message.truncate(end);
    if let Some(counts) = message.get_mut(6..12) {
        counts.fill(0);
    }
    message
}

/// Where a message's OPT record is: the offset of its owner name and of its RDATA, and the
/// RDATA's length; and whether it is the message's last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opt {
    /// Offset of the record (its root owner name).
    pub start: usize,
    /// Offset of the RDATA length field.
    pub rdlength_at: usize,
    /// The RDATA's length.
    pub rdlength: usize,
    /// Nothing follows the record.
    pub last: bool,
}

impl Opt {
    /// The requestor's UDP payload size (the OPT's CLASS field).
    pub fn payload(&self, message: &[u8]) -> u16 {
        let at = self.start + 3;
        message
            .get(at..at + 2)
            .map_or(512, |b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// The options in the RDATA, as (code, data).
    pub fn options<'m>(&self, message: &'m [u8]) -> impl Iterator<Item = (u16, &'m [u8])> {
        let start = self.rdlength_at + 2;
        let mut rest = message.get(start..start + self.rdlength).unwrap_or(&[]);
        std::iter::from_fn(move || {
            let (head, tail) = rest.split_at_checked(4)?;
            let code = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let (data, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some((code, data))
        })
    }
}

/// The message's OPT record, if it has one.
pub fn find_opt(message: &[u8]) -> Option<Opt> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ])))
    };
    let (answers, authorities, additionals) = (count(6)?, count(8)?, count(10)?);
    if additionals == 0 {
        return None;
    }
    let mut at = question_end(message)?;
    let records = answers + authorities + additionals;
    for index in 0..records {
        let start = at;
        at = skip_name(message, at)?;
        let rtype = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
        let rdlength_at = at + 8;
        let rdlength = count(rdlength_at)?;
        at = rdlength_at + 2 + rdlength;
        if at > message.len() {
            return None;
        }
        if rtype == TYPE_OPT && index >= answers + authorities {
            return Some(Opt {
                start,
                rdlength_at,
                rdlength,
                last: index + 1 == records && at == message.len(),
            });
        }
    }
    None
}

/// Removes every EDNS option `code` from the message's OPT record, if it has one.
pub fn strip_option(message: &mut Vec<u8>, code: u16) {
    let Some(opt) = find_opt(message) else { return };
    let kept: Vec<u8> = (opt.options(message))
        .filter(|&(c, _)| c != code)
        .flat_map(|(c, data)| {
            let len = data.len() as u16;
            [c.to_be_bytes(), len.to_be_bytes()]
                .concat()
                .into_iter()
                .chain(data.iter().copied())
        })
        .collect();
    let rdata = opt.rdlength_at + 2;
    let Ok(len) = u16::try_from(kept.len()) else {
        return;
    };
    message[opt.rdlength_at..rdata].copy_from_slice(&len.to_be_bytes());
    message.splice(rdata..rdata + opt.rdlength, kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `a.example.` with an OPT (payload 1232) carrying `options`.
    fn query(options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
        let rdata: Vec<u8> = (options.iter())
            .flat_map(|(code, data)| {
                let mut o = code.to_be_bytes().to_vec();
                o.extend_from_slice(&(data.len() as u16).to_be_bytes());
                o.extend_from_slice(data);
                o
            })
            .collect();
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
        m
    }

    #[test]
    fn strip_option_removes_every_option_of_a_code_and_keeps_the_rest() {
        let mut m = query(&[(10, &[1; 8]), (12, &[0; 3]), (10, &[2; 24])]);
        let before = m.len();
        strip_option(&mut m, 10);
        assert_eq!(m.len(), before - (4 + 8) - (4 + 24));
        let opt = find_opt(&m).unwrap();
        assert!(opt.last);
        assert_eq!(opt.options(&m).collect::<Vec<_>>(), [(12, &[0u8; 3][..])]);
        // A message without the option, or without an OPT, is left as it is.
        let same = m.clone();
        strip_option(&mut m, 10);
        assert_eq!(m, same);
        let mut bare = m[..m.len() - 11 - 7].to_vec();
        bare[11] = 0;
        let same = bare.clone();
        strip_option(&mut bare, 10);
        assert_eq!(bare, same);
    }

    #[test]
    fn finds_the_opt_and_reads_its_options() {
        let m = query(&[(10, &[1, 2, 3, 4, 5, 6, 7, 8]), (3, &[])]);
        assert_eq!(question_end(&m), Some(27));
        let opt = find_opt(&m).unwrap();
        assert_eq!((opt.start, opt.last, opt.payload(&m)), (27, true, 1232));
        let options: Vec<_> = opt.options(&m).collect();
        assert_eq!(options, [(10, &[1, 2, 3, 4, 5, 6, 7, 8][..]), (3, &[][..])]);
    }

    #[test]
    fn the_question_reads_as_text_with_odd_bytes_escaped() {
        let m = query(&[]);
        assert_eq!(question(&m), Some(("a.example.".to_string(), 1)));
        let mut odd = m.clone();
        odd[13] = b' ';
        assert_eq!(question(&odd).unwrap().0, "\\032.example.");
        assert_eq!(question(&m[..20]), None);
    }

    #[test]
    fn malformed_messages_give_none() {
        let m = query(&[(10, &[1, 2, 3, 4, 5, 6, 7, 8])]);
        for end in 0..m.len() {
            assert_eq!(find_opt(&m[..end]), None, "cut at {end}");
        }
        // A label length with the reserved high bits.
        let mut bad = m.clone();
        bad[12] = 0x81;
        assert_eq!(find_opt(&bad), None);
        // An option running past the RDATA is not read.
        let mut short = m;
        let at = short.len() - 9;
        short[at] = 0xff;
        assert_eq!(find_opt(&short).unwrap().options(&short).count(), 0);
    }
}
