//! The HTML report stays light for a DeepSeek-V3-shaped model (256 experts, 58 MoE
//! layers) on 64 GPUs in 8 nodes: bounded bytes and SVG elements, with every part of
//! the page present (plan cards, the highlighted summary, the traffic plots, the load
//! view with GPU ids and nodes, the binned co-activation).

use std::collections::BTreeMap;

use moeplace_core::cluster::Cluster;
use moeplace_core::placers::{by_name, Params, PlacerInput};
use moeplace_core::protocol;
use moeplace_core::serving::{Homes, Serving};
use moeplace_core::simulate::simulate;
use moeplace_core::stats::{pair_count, ExpertLoads, ProfileOptions, Statistics};
use moeplace_core::synth::{generate_all, SynthConfig};
use moeplace_core::trace::Trace;
use moeplace_formats::report_html::{render, ReportInput, ReportPlan};

/// SVG elements that draw something.
fn elements(html: &str) -> usize {
    ["<rect", "<path", "<text", "<line", "<polyline", "<circle", "<polygon"]
        .iter()
        .map(|t| html.matches(t).count())
        .sum()
}

#[test]
fn a_256_expert_report_stays_light() {
    let mut config = SynthConfig::preset("deepseek-v3").unwrap();
    config.tokens = Some(2000);
    let trace = Trace { shape: config.shape, batches: generate_all(&config, 1).unwrap() };
    let shape = trace.shape;
    assert_eq!((shape.layers, shape.experts), (58, 256));
    let links = Cluster::new(8, 64, 5).unwrap();
    let (bc, bp, br) = protocol::baseline(&trace, &links).unwrap();
    let loads = ExpertLoads::from_trace(&trace);
    let stats = Statistics::from_batches(
        shape,
        ProfileOptions { request_vectors: false, ..Default::default() },
        &trace.batches,
    )
    .unwrap();
    let params = Params::default();
    let serving = Serving::new("nearest", Homes::RoundRobin);
    let mut planned = Vec::new();
    for name in ["round-robin", "linear"] {
        let input = PlacerInput {
            shape,
            cluster: &links,
            loads: &loads,
            stats: Some(&stats),
            previous: None,
            params: &params,
            seed: 0,
        };
        let placement = by_name(name).unwrap().place(&input).unwrap().placement;
        let dispatcher = serving.dispatcher(0).unwrap();
        let r = simulate(&trace, &placement, &links, dispatcher.as_ref(), &serving.home_policy(None)).unwrap();
        planned.push((name, placement, r));
    }
    let no_params = BTreeMap::new();
    let base_serving = Serving::new("primary", Homes::RoundRobin);
    let mut plans = vec![ReportPlan {
        label: "baseline",
        placer: "linear",
        parameters: &no_params,
        serving: &base_serving,
        nodes: bc.nodes,
        placement: &bp,
        result: &br,
        baseline: None,
        bound_max_over_mean: 1.0,
        tuning: None,
    }];
    for (name, p, r) in &planned {
        plans.push(ReportPlan {
            label: name,
            placer: name,
            parameters: &no_params,
            serving: &serving,
            nodes: 8,
            placement: p,
            result: r,
            baseline: Some(&br),
            bound_max_over_mean: 1.0,
            tuning: None,
        });
    }
    let pooled = stats.pooled(|_| true);
    let pc = pair_count(shape.experts);
    let layer = shape.layers / 2;
    let input = ReportInput {
        title: "256 experts",
        summary: "table",
        tokens: 2000,
        plans,
        coact_layer: layer,
        coact: &pooled.coact[layer * pc..(layer + 1) * pc],
        experts: shape.experts,
    };
    let html = render(&input);
    let (bytes, count) = (html.len(), elements(&html));
    assert!(bytes < 2_000_000, "{bytes} bytes");
    assert!(count < 20_000, "{count} SVG elements");
    for part in [
        "id=\"summary\"",
        "id=\"plan-2\"",
        "id=\"plot-remote-nodes\"",
        "id=\"plot-inter-node-bytes\"",
        "id=\"load-2\"",
        "id=\"coact-2\"",
    ] {
        assert!(html.contains(part), "no {part}");
    }
    // GPU ids on the load view, every node named, the best values marked.
    assert!(html.contains(">63</text>") && html.contains(">node 7</text>"), "load view lacks GPU ids or nodes");
    assert!(html.matches("class=\"best\"").count() >= 10);
    assert!(html.contains("summed into bins"));
}
