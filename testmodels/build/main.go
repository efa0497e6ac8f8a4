// Command build writes a testmodels transformer as an ONNX file, for
// trying qatc without a model of your own and for training the demo model
// from scratch.
//
//	go run ./testmodels/build -preset tiny -o tiny.onnx
//	go run ./testmodels/build -preset base -vocab 512 -hidden 128 -o init.onnx
//
// The big preset is saved with external data (tiny.onnx.data beside it).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/testmodels"
)

func main() {
	preset := flag.String("preset", "tiny", "tiny, base or big")
	out := flag.String("o", "", "output model file")
	vocab := flag.Int("vocab", 0, "vocabulary size (0: the preset's)")
	hidden := flag.Int("hidden", 0, "model width (0: the preset's)")
	ffn := flag.Int("ffn", 0, "FFN inner size (0: the preset's)")
	heads := flag.Int("heads", 0, "attention heads (0: the preset's)")
	layers := flag.Int("layers", 0, "encoder and decoder layers each (0: the preset's)")
	maxLen := flag.Int("max-len", 0, "longest sequence (0: the preset's)")
	seed := flag.Int64("seed", 0, "weight seed (0: the preset's)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "build: -o FILE is required")
		os.Exit(2)
	}
	cfg, err := testmodels.Preset(*preset)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(2)
	}
	for _, o := range []struct {
		v   int
		dst *int
	}{{*vocab, &cfg.Vocab}, {*hidden, &cfg.Hidden}, {*ffn, &cfg.FFN}, {*heads, &cfg.Heads}, {*layers, &cfg.EncoderLayers}, {*layers, &cfg.DecoderLayers}, {*maxLen, &cfg.MaxLen}} {
		if o.v > 0 {
			*o.dst = o.v
		}
	}
	if *seed != 0 {
		cfg.Seed = *seed
	}
	m, err := testmodels.Build(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	if err := m.SaveWith(*out, &graph.SaveOptions{ExternalData: *preset == "big"}); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s: %d parameters\n", *out, cfg.NumParams())
}
