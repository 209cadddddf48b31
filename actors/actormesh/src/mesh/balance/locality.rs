//! Locality: a caller prefers a ready endpoint on its own node, then one in its own zone,
//! then any. The endpoints are split once per snapshot into tiers, tried in order.

/// Where the caller is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    /// The caller node's SPIFFE id.
    pub node: String,
    /// The caller node's `zone` attribute.
    pub zone: Option<String>,
}

/// The tiers of endpoints (indexes into `endpoints`, given as `(node, zone)`), most
/// preferred first. Empty tiers, and tiers no smaller than the next, are left out; the last
/// tier is always every endpoint. With `enabled` false, that one tier alone.
pub fn tiers<'a>(
    endpoints: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    me: &Locality,
    enabled: bool,
) -> Vec<Vec<u32>> {
    let mut node = Vec::new();
    let mut zone = Vec::new();
    let mut all = Vec::new();
    for (i, (n, z)) in endpoints.into_iter().enumerate() {
        let i = i as u32;
        if n == me.node {
            node.push(i);
        }
        if me.zone.is_some() && z == me.zone.as_deref() {
            zone.push(i);
        }
        all.push(i);
    }
    if !enabled {
        return vec![all];
    }
    let mut out = Vec::with_capacity(3);
    for t in [node, zone] {
        if !t.is_empty()
            && t.len() < all.len()
            && out.last().is_none_or(|l: &Vec<u32>| t.len() > l.len())
        {
            out.push(t);
        }
    }
    out.push(all);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Locality {
        Locality {
            node: "n1".into(),
            zone: Some("z1".into()),
        }
    }

    #[test]
    fn own_node_then_own_zone_then_all() {
        let eps = [
            ("n2", Some("z1")),
            ("n1", Some("z1")),
            ("n3", Some("z2")),
            ("n4", None),
        ];
        assert_eq!(
            tiers(eps, &me(), true),
            vec![vec![1], vec![0, 1], vec![0, 1, 2, 3]]
        );
        assert_eq!(tiers(eps, &me(), false), vec![vec![0, 1, 2, 3]]);
        // Nothing here or in the zone: one tier.
        assert_eq!(
            tiers([("n3", Some("z2")), ("n4", None)], &me(), true),
            vec![vec![0, 1]]
        );
        // The zone adds nothing over the node: not a tier of its own.
        assert_eq!(
            tiers([("n1", Some("z1")), ("n4", None)], &me(), true),
            vec![vec![0], vec![0, 1]]
        );
    }
}
