//! TSIG (RFC 8945): verifying a signed request and signing the answers to it, on wire bytes.
//!
//! Pure: the time is an argument. A request's TSIG record must be the last record of the
//! message; the MAC covers the message without it (its ID set back to the original, ARCOUNT one
//! less) followed by the TSIG variables (§4.3.3). An answer's MAC also covers the request's MAC,
//! and each later message of a multi-message answer covers the previous MAC and only the timers
//! (§5.3.1). Every message we send is signed, never every hundredth.

use ring::hmac;

use super::wire::{question_end, skip_name};
use crate::snapshot::{TsigAlgorithm, TsigKey, wire};

/// The TSIG record's type.
pub const TYPE_TSIG: u16 = 250;
/// The class of TSIG records: ANY.
const CLASS_ANY: u16 = 255;
/// How far a request's time may be from ours, in seconds, when it says less.
const MAX_FUDGE: u16 = 300;

/// TSIG errors (RFC 8945 §3), carried in the record's error field; the message's RCODE is
/// NOTAUTH.
pub const BADSIG: u16 = 16;
/// The key is not known.
pub const BADKEY: u16 = 17;
/// The time is outside the fudge.
pub const BADTIME: u16 = 18;
/// The MAC is shorter than allowed.
pub const BADTRUNC: u16 = 22;

/// A request's TSIG record, read from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The key's name, lower-case wire form.
    pub key: Vec<u8>,
    /// The algorithm's name, lower-case wire form.
    pub algorithm: Vec<u8>,
    /// When the request was signed, seconds since 1970.
    pub time: u64,
    /// How far off `time` may be.
    pub fudge: u16,
    /// The MAC.
    pub mac: Vec<u8>,
    /// The message ID when it was signed.
    pub original_id: u16,
    /// The TSIG error (in an answer).
    pub error: u16,
    /// The other data (our time, in a BADTIME answer).
    pub other: Vec<u8>,
    /// Where the TSIG record starts: the signed message is everything before.
    pub start: usize,
}

/// Why a request's signature was not accepted: the TSIG error to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// BADKEY: no such key, or not with that algorithm.
    Key,
    /// BADSIG: the MAC does not verify.
    Sig,
    /// BADTIME: signed too long ago or ahead; the answer is signed and carries our time.
    Time,
}

impl Rejected {
    /// The TSIG error code.
    pub fn code(self) -> u16 {
        match self {
            Rejected::Key => BADKEY,
            Rejected::Sig => BADSIG,
            Rejected::Time => BADTIME,
        }
    }
}

/// The message's TSIG record: `None` when it has none, `Some(Err)` when one is there but
/// malformed or not the last record (FORMERR).
pub fn find(message: &[u8]) -> Option<Result<Signed, ()>> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ])))
    };
    let records = count(6)? + count(8)? + count(10)?;
    if count(10)? == 0 {
        return None;
    }
    let mut at = question_end(message)?;
    let mut last = None;
    for index in 0..records {
        let start = at;
        let after_name = skip_name(message, at)?;
        let rtype = count(after_name)?;
        let rdlength = count(after_name + 8)?;
        at = after_name + 10 + rdlength;
        if at > message.len() {
            return None;
        }
        if rtype == usize::from(TYPE_TSIG) {
            if index + 1 != records || at != message.len() {
                return Some(Err(()));
            }
            last = Some((start, after_name));
        }
    }
    let (start, after_name) = last?;
    Some(parse(message, start, after_name).ok_or(()))
}

fn parse(message: &[u8], start: usize, after_name: usize) -> Option<Signed> {
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ]))
    };
    if u16_at(after_name + 2)? != CLASS_ANY {
        return None;
    }
    let key = read_name(message, start)?;
    let rdata = after_name + 10;
    let algorithm = read_name(message, rdata)?;
    let mut at = skip_name(message, rdata)?;
    let time = (message.get(at..at + 6)?.iter()).fold(0u64, |t, &b| t << 8 | u64::from(b));
    let fudge = u16_at(at + 6)?;
    let mac_len = usize::from(u16_at(at + 8)?);
    at += 10;
    let mac = message.get(at..at + mac_len)?.to_vec();
    at += mac_len;
    let original_id = u16_at(at)?;
    let error = u16_at(at + 2)?;
    let other_len = usize::from(u16_at(at + 4)?);
    let other = message.get(at + 6..at + 6 + other_len)?.to_vec();
    Some(Signed {
        key,
        algorithm,
        time,
        fudge,
        mac,
        original_id,
        error,
        other,
        start,
    })
}

/// A name at `at`, compression pointers followed, as lower-case wire form.
fn read_name(message: &[u8], mut at: usize) -> Option<Vec<u8>> {
    let mut name = Vec::new();
    let mut jumps = 0;
    loop {
        let len = *message.get(at)?;
        match len {
            0 => {
                name.push(0);
                return (name.len() <= 255).then_some(name);
            }
            l if l & 0xc0 == 0xc0 => {
                jumps += 1;
                if jumps > 16 {
                    return None;
                }
                at = usize::from(l & 0x3f) << 8 | usize::from(*message.get(at + 1)?);
            }
            l if l & 0xc0 == 0 => {
                let label = message.get(at + 1..at + 1 + usize::from(l))?;
                name.push(l);
                name.extend(label.iter().map(u8::to_ascii_lowercase));
                at += usize::from(l) + 1;
            }
            _ => return None,
        }
    }
}

fn algorithm_of(name: &[u8]) -> Option<TsigAlgorithm> {
    let mut text = String::new();
    let mut at = 0;
    while let Some(&len) = name.get(at) {
        if len == 0 {
            break;
        }
        let label = name.get(at + 1..at + 1 + usize::from(len))?;
        text.push_str(std::str::from_utf8(label).ok()?);
        text.push('.');
        at += usize::from(len) + 1;
    }
    TsigAlgorithm::from_name(&text)
}

fn hmac_key(key: &TsigKey) -> hmac::Key {
    let algorithm = match key.algorithm {
        TsigAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
        TsigAlgorithm::HmacSha384 => hmac::HMAC_SHA384,
        TsigAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
    };
    hmac::Key::new(algorithm, &key.secret)
}

/// The TSIG variables (§4.3.3), or only the timers (§5.3.1).
fn variables(
    ctx: &mut hmac::Context,
    key: &TsigKey,
    time: u64,
    fudge: u16,
    error_other: Option<(u16, &[u8])>,
) {
    let Some((error, other)) = error_other else {
        ctx.update(&time.to_be_bytes()[2..]);
        ctx.update(&fudge.to_be_bytes());
        return;
    };
    ctx.update(&wire(&key.name));
    ctx.update(&CLASS_ANY.to_be_bytes());
    ctx.update(&0u32.to_be_bytes());
    ctx.update(&algorithm_wire(key.algorithm));
    ctx.update(&time.to_be_bytes()[2..]);
    ctx.update(&fudge.to_be_bytes());
    ctx.update(&error.to_be_bytes());
    ctx.update(&(other.len() as u16).to_be_bytes());
    ctx.update(other);
}

fn algorithm_wire(algorithm: TsigAlgorithm) -> Vec<u8> {
    let mut out = Vec::new();
    for label in algorithm.name().split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// The signed part of a message: its bytes before `end` with the ID set to `id` and ARCOUNT
/// reduced by `less`.
fn update_message(ctx: &mut hmac::Context, message: &[u8], end: usize, id: u16, less: u16) {
    let arcount = u16::from_be_bytes([message[10], message[11]]).wrapping_sub(less);
    ctx.update(&id.to_be_bytes());
    ctx.update(&message[2..10]);
    ctx.update(&arcount.to_be_bytes());
    ctx.update(&message[12..end]);
}

/// Verifies a request signed with `key` (found by the caller from `signed.key`) at time `now`.
pub fn verify(message: &[u8], signed: &Signed, key: &TsigKey, now: u64) -> Result<(), Rejected> {
    if algorithm_of(&signed.algorithm) != Some(key.algorithm) || message.len() < 12 {
        return Err(Rejected::Key);
    }
    let full = key.algorithm_len();
    // RFC 8945 §5.2.2.1: a truncated MAC must keep half the hash and at least 10 bytes; we take
    // only whole ones, which is what secondaries send.
    if signed.mac.len() != full {
        return Err(Rejected::Sig);
    }
    let mut ctx = hmac::Context::with_key(&hmac_key(key));
    update_message(&mut ctx, message, signed.start, signed.original_id, 1);
    variables(&mut ctx, key, signed.time, signed.fudge, Some((0, &[])));
    let tag = ctx.sign();
    if !constant_time_eq(tag.as_ref(), &signed.mac) {
        return Err(Rejected::Sig);
    }
    if now.abs_diff(signed.time) > u64::from(signed.fudge.min(MAX_FUDGE)) {
        return Err(Rejected::Time);
    }
    Ok(())
}

/// Verifies the answer to a request we signed (`request_mac`): its MAC covers that MAC, the
/// answer and its TSIG variables (§5.3.1 read from the other side).
pub fn verify_response(
    message: &[u8],
    signed: &Signed,
    key: &TsigKey,
    request_mac: &[u8],
    now: u64,
) -> Result<(), Rejected> {
    if algorithm_of(&signed.algorithm) != Some(key.algorithm) || message.len() < 12 {
        return Err(Rejected::Key);
    }
    let mut ctx = hmac::Context::with_key(&hmac_key(key));
    ctx.update(&(request_mac.len() as u16).to_be_bytes());
    ctx.update(request_mac);
    update_message(&mut ctx, message, signed.start, signed.original_id, 1);
    variables(
        &mut ctx,
        key,
        signed.time,
        signed.fudge,
        Some((signed.error, &signed.other)),
    );
    if !constant_time_eq(ctx.sign().as_ref(), &signed.mac) {
        return Err(Rejected::Sig);
    }
    if now.abs_diff(signed.time) > u64::from(signed.fudge.min(MAX_FUDGE)) {
        return Err(Rejected::Time);
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TsigKey {
    fn algorithm_len(&self) -> usize {
        match self.algorithm {
            TsigAlgorithm::HmacSha256 => 32,
            TsigAlgorithm::HmacSha384 => 48,
            TsigAlgorithm::HmacSha512 => 64,
        }
    }
}

/// Signs the messages of one answer to a verified request: the first covers the request's
/// MAC and the TSIG variables, each later one the previous MAC and the timers.
pub struct Signer {
    key: TsigKey,
    prior: Vec<u8>,
    time: u64,
    first: bool,
}

impl Signer {
    /// A signer for answers to the request whose MAC is `request_mac`, at time `now`.
    pub fn new(key: &TsigKey, request_mac: &[u8], now: u64) -> Signer {
        Signer {
            key: key.clone(),
            prior: request_mac.to_vec(),
            time: now,
            first: true,
        }
    }

    /// Appends a TSIG record to `message` (which must not have one) with `error` and, for
    /// BADTIME, our time as other data.
    pub fn sign(&mut self, message: &mut Vec<u8>, error: u16) {
        if message.len() < 12 {
            return;
        }
        let other: Vec<u8> = match error {
            BADTIME => self.time.to_be_bytes()[2..].to_vec(),
            _ => Vec::new(),
        };
        let fudge = MAX_FUDGE;
        let mut ctx = hmac::Context::with_key(&hmac_key(&self.key));
        ctx.update(&(self.prior.len() as u16).to_be_bytes());
        ctx.update(&self.prior);
        let id = u16::from_be_bytes([message[0], message[1]]);
        update_message(&mut ctx, message, message.len(), id, 0);
        let vars = self.first.then_some((error, &other[..]));
        variables(&mut ctx, &self.key, self.time, fudge, vars);
        let mac = ctx.sign().as_ref().to_vec();
        append(message, &self.key, self.time, fudge, &mac, error, &other);
        self.prior = mac;
        self.first = false;
    }
}

/// Appends an unsigned TSIG record (no MAC) with `error`: the answer to a request whose key is
/// unknown or whose MAC does not verify (§5.2.2).
pub fn append_unsigned(message: &mut Vec<u8>, signed: &Signed, error: u16) {
    if message.len() < 12 {
        return;
    }
    message.extend_from_slice(&signed.key);
    message.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    message.extend_from_slice(&CLASS_ANY.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    let rdlength = signed.algorithm.len() + 16;
    message.extend_from_slice(&(rdlength as u16).to_be_bytes());
    message.extend_from_slice(&signed.algorithm);
    message.extend_from_slice(&signed.time.to_be_bytes()[2..]);
    message.extend_from_slice(&signed.fudge.to_be_bytes());
    message.extend_from_slice(&0u16.to_be_bytes());
    message.extend_from_slice(&signed.original_id.to_be_bytes());
    message.extend_from_slice(&error.to_be_bytes());
    message.extend_from_slice(&0u16.to_be_bytes());
    bump_arcount(message);
}

fn append(
    message: &mut Vec<u8>,
    key: &TsigKey,
    time: u64,
    fudge: u16,
    mac: &[u8],
    error: u16,
    other: &[u8],
) {
    let algorithm = algorithm_wire(key.algorithm);
    let id = [message[0], message[1]];
    message.extend_from_slice(&wire(&key.name));
    message.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    message.extend_from_slice(&CLASS_ANY.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    let rdlength = algorithm.len() + 16 + mac.len() + other.len();
    message.extend_from_slice(&(rdlength as u16).to_be_bytes());
    message.extend_from_slice(&algorithm);
    message.extend_from_slice(&time.to_be_bytes()[2..]);
    message.extend_from_slice(&fudge.to_be_bytes());
    message.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    message.extend_from_slice(mac);
    message.extend_from_slice(&id);
    message.extend_from_slice(&error.to_be_bytes());
    message.extend_from_slice(&(other.len() as u16).to_be_bytes());
    message.extend_from_slice(other);
    bump_arcount(message);
}

fn bump_arcount(message: &mut [u8]) {
    let arcount = u16::from_be_bytes([message[10], message[11]]).wrapping_add(1);
    message[10..12].copy_from_slice(&arcount.to_be_bytes());
}

/// Signs a request we send (a NOTIFY) with `key` at `now`; returns its MAC, which the answer's
/// signature covers.
pub fn sign_request(message: &mut Vec<u8>, key: &TsigKey, now: u64) -> Vec<u8> {
    if message.len() < 12 {
        return Vec::new();
    }
    let mut ctx = hmac::Context::with_key(&hmac_key(key));
    let id = u16::from_be_bytes([message[0], message[1]]);
    update_message(&mut ctx, message, message.len(), id, 0);
    variables(&mut ctx, key, now, MAX_FUDGE, Some((0, &[])));
    let mac = ctx.sign().as_ref().to_vec();
    append(message, key, now, MAX_FUDGE, &mac, 0, &[]);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn key(secret: &[u8]) -> TsigKey {
        TsigKey {
            name: Name::from_ascii("xfr-a.").unwrap(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: secret.to_vec(),
        }
    }

    /// A query for `a.example.`/SOA.
    fn query() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(b"\x01a\x07example\x00\x00\x06\x00\x01");
        m
    }

    #[test]
    fn a_signed_request_verifies_with_its_key_only_and_in_time() {
        let k = key(&[7; 32]);
        let mut m = query();
        let mac = sign_request(&mut m, &k, 1_000_000);
        let signed = find(&m).unwrap().unwrap();
        assert_eq!(signed.mac, mac);
        assert_eq!(signed.key, b"\x05xfr-a\x00");
        assert_eq!(signed.start, query().len());
        assert_eq!(verify(&m, &signed, &k, 1_000_100), Ok(()));
        assert_eq!(
            verify(&m, &signed, &key(&[8; 32]), 1_000_100),
            Err(Rejected::Sig)
        );
        assert_eq!(verify(&m, &signed, &k, 1_000_301), Err(Rejected::Time));
        // A changed byte anywhere in the signed part breaks the MAC.
        let mut changed = m.clone();
        changed[14] ^= 0x20;
        assert_eq!(verify(&changed, &signed, &k, 1_000_000), Err(Rejected::Sig));
        let other = TsigKey {
            algorithm: TsigAlgorithm::HmacSha512,
            ..k.clone()
        };
        assert_eq!(verify(&m, &signed, &other, 1_000_000), Err(Rejected::Key));
    }

    #[test]
    fn a_tsig_that_is_not_the_last_record_is_malformed_and_none_is_none() {
        assert_eq!(find(&query()), None);
        let k = key(&[7; 32]);
        let mut m = query();
        sign_request(&mut m, &k, 1);
        // Another additional record after the TSIG.
        m.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
        m[11] += 1;
        assert_eq!(find(&m), Some(Err(())));
    }

    /// The signer's chain: the first message covers the request MAC and the variables, the next
    /// the previous MAC and the timers; recomputed here from the RFC's description.
    #[test]
    fn answers_chain_their_macs() {
        let k = key(&[9; 32]);
        let mut signer = Signer::new(&k, &[1, 2, 3], 5000);
        let mut first = query();
        first[2] |= 0x80;
        let unsigned_first = first.clone();
        signer.sign(&mut first, 0);
        let mut second = unsigned_first.clone();
        signer.sign(&mut second, 0);
        let mac_of = |m: &[u8]| find(m).unwrap().unwrap().mac;

        let mut ctx = hmac::Context::with_key(&hmac_key(&k));
        ctx.update(&[0, 3, 1, 2, 3]);
        ctx.update(&unsigned_first);
        variables(&mut ctx, &k, 5000, 300, Some((0, &[])));
        assert_eq!(mac_of(&first), ctx.sign().as_ref());

        let mut ctx = hmac::Context::with_key(&hmac_key(&k));
        ctx.update(&[0, 32]);
        ctx.update(&mac_of(&first));
        ctx.update(&unsigned_first);
        ctx.update(&[0, 0, 0, 0, 0x13, 0x88, 1, 0x2c]);
        assert_eq!(mac_of(&second), ctx.sign().as_ref());
    }
}
