//! Which read requests one poll of a device makes: registers of one table
//! at adjacent or overlapping addresses share a request of at most
//! `max_batch` words (16 × that many bits for coils and discrete inputs,
//! at most 2000); a gap between registers starts a new request, so no
//! request touches an address the config does not name (a device may
//! answer such a read with an exception).

use super::config::{RegisterConfig, Table};

/// One read request and the registers it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The table read.
    pub table: Table,
    /// The first address.
    pub start: u16,
    /// Words (or bits) read.
    pub count: u16,
    /// Indices into the device's registers served by it.
    pub members: Vec<usize>,
}

impl Request {
    /// The slice of a response that belongs to `r`, if the response is
    /// long enough.
    pub fn slice<'a, T>(&self, r: &RegisterConfig, response: &'a [T]) -> Option<&'a [T]> {
        let from = usize::from(r.address.checked_sub(self.start)?);
        response.get(from..from.checked_add(usize::from(r.span()))?)
    }
}

/// The requests for `regs`, in (table, address) order.
pub fn plan(regs: &[RegisterConfig], max_batch: u16) -> Vec<Request> {
    let mut order: Vec<usize> = (0..regs.len()).collect();
    order.sort_by_key(|&i| (regs[i].table, regs[i].address));
    let mut out: Vec<Request> = Vec::new();
    for i in order {
        let r = &regs[i];
        let limit = if r.table.is_bits() {
            u32::from(max_batch).saturating_mul(16).min(2000)
        } else {
            u32::from(max_batch)
        };
        let end = u32::from(r.address) + u32::from(r.span());
        if let Some(cur) = out.last_mut() {
            let cur_end = u32::from(cur.start) + u32::from(cur.count);
            let joined_end = cur_end.max(end);
            if cur.table == r.table
                && u32::from(r.address) <= cur_end
                && joined_end - u32::from(cur.start) <= limit
            {
                // Fits in u16: at most `limit` ≤ 2000.
                cur.count = u16::try_from(joined_end - u32::from(cur.start)).unwrap_or(cur.count);
                cur.members.push(i);
                continue;
            }
        }
        out.push(Request {
            table: r.table,
            start: r.address,
            count: r.span(),
            members: vec![i],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(table: &str, address: u16, t: &str) -> RegisterConfig {
        let text = format!(
            "metric = \"m{address}\"\ntable = \"{table}\"\naddress = {address}\ntype = \"{t}\"\n"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn adjacent_registers_share_requests_up_to_the_batch() {
        let regs = vec![
            reg("holding", 10, "uint32"),
            reg("holding", 0, "uint16"),
            reg("holding", 1, "int16"),
            reg("holding", 2, "float64"),
            reg("input", 3, "uint16"),
            reg("coil", 0, "uint16"),
            reg("coil", 1, "uint16"),
        ];
        let p = plan(&regs, 5);
        let shape: Vec<_> = p.iter().map(|r| (r.table, r.start, r.count)).collect();
        assert_eq!(
            shape,
            vec![
                (Table::Holding, 0, 2),
                (Table::Holding, 2, 4),
                (Table::Holding, 10, 2),
                (Table::Input, 3, 1),
                (Table::Coil, 0, 2),
            ]
        );
        assert_eq!(p[0].members, vec![1, 2]);
        assert_eq!(p[0].slice(&regs[2], &[7u16, 8]), Some(&[8u16][..]));
        assert_eq!(p[1].slice(&regs[3], &[1u16, 2]), None, "short response");
    }
}
