//! vsock context IDs: every VM gets one, unique on this host.

use vmctl_api::spec::FIRST_GUEST_CID;

/// The smallest CID ≥ [`FIRST_GUEST_CID`] not in `used`.
pub fn smallest_free(used: impl IntoIterator<Item = u32>) -> u32 {
    let mut used: Vec<u32> = used.into_iter().filter(|c| *c >= FIRST_GUEST_CID).collect();
    used.sort_unstable();
    used.dedup();
    let mut candidate = FIRST_GUEST_CID;
    for cid in used {
        if cid != candidate {
            break;
        }
        candidate += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_gaps_first() {
        assert_eq!(smallest_free([]), 3);
        assert_eq!(smallest_free([3, 4, 5]), 6);
        assert_eq!(smallest_free([5, 3, 6]), 4);
        assert_eq!(smallest_free([4, 4, 2]), 3);
    }
}
