//! Serving-time dispatch of one MoE layer for a batch of tokens: the tokens' top-k
//! expert ids and home GPUs in, the physical slot of every pick out. It makes the
//! replay's choices: tokens in order, the load signal counting this batch's picks
//! from zero (the batch is one replay chunk), the token key the token's index in the
//! batch (the tokens of one request, in order).

use super::{Dispatcher, LayerBatch, ReplicaTable};
use crate::placement::Placement;

/// What is wrong with a batch; nothing is written when one is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("layer {layer} is out of range: the plan has {layers} MoE layers")]
    Layer { layer: usize, layers: usize },
    #[error("top-k must be at least 1")]
    NoPicks,
    #[error("{ids} expert ids are not {tokens} tokens x top-{k}")]
    PickCount { ids: usize, tokens: usize, k: usize },
    #[error("{homes} home ranks for {tokens} tokens")]
    HomeCount { homes: usize, tokens: usize },
    #[error("token {token}: expert id {id} is out of range: the model has {experts} experts (ids 0..{experts})")]
    Expert { token: usize, id: i64, experts: usize },
    #[error("token {token}: home rank {home} is out of range: the plan has {gpus} GPUs (ranks 0..{gpus})")]
    Home { token: usize, home: i64, gpus: usize },
    #[error("{nodes} nodes do not divide the plan's {gpus} GPUs")]
    Nodes { nodes: usize, gpus: usize },
}

fn wide<T: Into<i64>>(x: T) -> i64 {
    x.into()
}

/// A dispatcher bound to a placement, answering with slots.
pub struct BatchDispatch {
    dispatcher: Box<dyn Dispatcher>,
    table: ReplicaTable,
    node_of: Vec<u32>,
    experts: usize,
    layers: usize,
    /// Slots of every (layer, expert) in slot order, flat; `offsets` index it.
    offsets: Vec<u32>,
    slots: Vec<u32>,
    /// `[layer * experts + expert]` -> the first copy's slot, when every choice is
    /// the first copy (no replicas, or a dispatcher that never looks).
    fixed: Option<Vec<u32>>,
}

impl BatchDispatch {
    pub fn new(placement: &Placement, nodes: usize, dispatcher: Box<dyn Dispatcher>) -> Result<Self, BatchError> {
        let gpus = placement.gpus();
        if nodes == 0 || !gpus.is_multiple_of(nodes) {
            return Err(BatchError::Nodes { nodes, gpus });
        }
        let per_node = gpus / nodes;
        let (layers, experts) = (placement.layers(), placement.experts());
        let mut offsets = Vec::with_capacity(layers * experts + 1);
        let mut slots = Vec::with_capacity(layers * placement.slots());
        offsets.push(0);
        for l in 0..layers {
            for e in 0..experts {
                slots.extend_from_slice(placement.replicas(l, e));
                offsets.push(slots.len() as u32);
            }
        }
        let table = ReplicaTable::new(placement);
        let fixed = (dispatcher.always_primary() || table.single_copies())
            .then(|| offsets[..offsets.len() - 1].iter().map(|&o| slots[o as usize]).collect());
        Ok(BatchDispatch {
            dispatcher,
            table,
            node_of: (0..gpus).map(|g| (g / per_node) as u32).collect(),
            experts,
            layers,
            offsets,
            slots,
            fixed,
        })
    }

    pub fn name(&self) -> &'static str {
        self.dispatcher.name()
    }

    /// Writes into `out[t * k + j]` the slot serving pick j of token t at `layer`;
    /// `ids` are `tokens x k` expert ids, `homes` the tokens' home GPUs.
    pub fn dispatch<I, H>(
        &self,
        layer: usize,
        ids: &[I],
        k: usize,
        homes: &[H],
        out: &mut [i64],
    ) -> Result<(), BatchError>
    where
        I: Copy + Into<i64>,
        H: Copy + Into<i64>,
    {
        if layer >= self.layers {
            return Err(BatchError::Layer { layer, layers: self.layers });
        }
        if k == 0 {
            return Err(BatchError::NoPicks);
        }
        let tokens = homes.len();
        if ids.len() != tokens * k || out.len() != ids.len() {
            return Err(BatchError::PickCount { ids: ids.len(), tokens, k });
        }
        let gpus = self.node_of.len();
        let e = self.experts;
        // Checked before any work: a refused batch leaves `out` untouched.
        if let Some((i, id)) = ids.iter().map(|&x| wide(x)).enumerate().find(|&(_, x)| !(0..e as i64).contains(&x)) {
            return Err(BatchError::Expert { token: i / k, id, experts: e });
        }
        if let Some((t, home)) =
            homes.iter().map(|&x| wide(x)).enumerate().find(|&(_, x)| !(0..gpus as i64).contains(&x))
        {
            return Err(BatchError::Home { token: t, home, gpus });
        }
        let base = layer * e;
        if let Some(fixed) = &self.fixed {
            let lut = &fixed[base..base + e];
            for (o, &x) in out.iter_mut().zip(ids) {
                *o = i64::from(lut[wide(x) as usize]);
            }
            return Ok(());
        }
        let picks: Vec<u16> = ids.iter().map(|&x| wide(x) as u16).collect();
        let homes: Vec<u32> = homes.iter().map(|&x| wide(x) as u32).collect();
        let keys: Vec<u64> = (0..tokens as u64).collect();
        let mut loads = vec![0u64; gpus];
        let mut chosen = vec![0u32; picks.len()];
        let batch = LayerBatch {
            replicas: &self.table,
            node_of: &self.node_of,
            layer,
            k,
            picks: &picks,
            homes: &homes,
            keys: &keys,
        };
        self.dispatcher.dispatch_layer(&batch, &mut loads, &mut chosen);
        for ((o, &p), &g) in out.iter_mut().zip(&picks).zip(&chosen) {
            let i = base + p as usize;
            let copies = &self.slots[self.offsets[i] as usize..self.offsets[i + 1] as usize];
            let at = self.table.gpus(layer, p as usize).iter().position(|&c| c == g).expect("a copy's GPU");
            *o = i64::from(copies[at]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::dispatch::registry;
    use crate::simulate::{simulate, HomePolicy};
    use crate::trace::{ModelShape, TokenBatch, TokenRef, Trace};

    /// One request of `n` tokens, 8 experts, top-3, 2 layers.
    fn trace(n: usize) -> Trace {
        let shape = ModelShape::new(2, 8, 3).unwrap();
        let mut b = TokenBatch::new(shape);
        for t in 0..n {
            let ids: Vec<u16> = (0..2)
                .flat_map(|l| {
                    let x = (t * 3 + l) % 8;
                    [x, (x + 1 + t % 3) % 8, (x + 5) % 8]
                })
                .map(|x| x as u16)
                .collect();
            let tok = TokenRef {
                request: "r",
                family: None,
                phase: None,
                position: t as u32,
                experts: &ids,
                gate_weights: None,
            };
            b.push(tok).unwrap();
        }
        Trace { shape, batches: vec![b] }
    }

    #[test]
    fn slots_load_gpus_as_the_replay_does() {
        // 4 GPUs in 2 nodes, 3 slots each: 4 redundant copies per layer.
        let rows = vec![vec![0, 1, 2, 3, 4, 0, 5, 6, 1, 7, 2, 0], vec![7, 6, 5, 4, 3, 7, 2, 1, 6, 0, 5, 1]];
        let p = Placement::new(8, 4, 3, rows).unwrap();
        let cluster = Cluster::new(2, 4, 3).unwrap();
        let tr = trace(300);
        let home = 3usize;
        let homes = vec![home as i64; 300];
        for d in registry(11) {
            let name = d.name();
            let b = BatchDispatch::new(&p, 2, d).unwrap();
            let policy = HomePolicy::Request([("r".to_string(), home)].into_iter().collect());
            let replay =
                simulate(&tr, &p, &cluster, crate::dispatch::by_name(name, 11).unwrap().as_ref(), &policy).unwrap();
            for layer in 0..2 {
                let ids: Vec<i64> =
                    (0..300).flat_map(|t| tr.batches[0].picks(t, layer).to_vec()).map(i64::from).collect();
                let mut out = vec![0i64; ids.len()];
                b.dispatch(layer, &ids, 3, &homes, &mut out).unwrap();
                let mut load = vec![0u64; 4];
                for (&s, &x) in out.iter().zip(&ids) {
                    assert_eq!(p.phy2log()[layer][s as usize] as i64, x, "{name}: a slot of the picked expert");
                    load[p.gpu_of_slot(s as usize)] += 1;
                }
                assert_eq!(load, replay.layers[layer].load, "{name}, layer {layer}");
            }
        }
    }

    #[test]
    fn bad_batches_are_refused_with_the_token() {
        let p = Placement::new(4, 2, 2, vec![vec![0, 1, 2, 3]]).unwrap();
        let b = BatchDispatch::new(&p, 1, crate::dispatch::by_name("nearest", 0).unwrap()).unwrap();
        let mut out = vec![0i64; 4];
        let e = b.dispatch(0, &[0i64, 1, 2, 4], 2, &[0i64, 1], &mut out).unwrap_err();
        assert_eq!(e, BatchError::Expert { token: 1, id: 4, experts: 4 });
        let e = b.dispatch(0, &[0i64, 1, 2, 3], 2, &[0i64, 2], &mut out).unwrap_err();
        assert_eq!(e, BatchError::Home { token: 1, home: 2, gpus: 2 });
        assert!(b.dispatch(1, &[0i64, 1], 2, &[0i64], &mut out[..2]).is_err());
        assert!(b.dispatch(0, &[0i64, 1, 2], 2, &[0i64], &mut out[..3]).is_err());
        assert_eq!(out, vec![0; 4]);
        assert!(BatchDispatch::new(&p, 3, crate::dispatch::by_name("primary", 0).unwrap()).is_err());
    }
}
