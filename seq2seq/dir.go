package seq2seq

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/safeio"
)

// Dir is a seq2seq directory's models in memory: the encoder and the two
// decoders (split out of the merged decoder when the directory holds only
// that one), and the config.
type Dir struct {
	// Layout says where the directory was read from and which files it
	// holds; Write writes the same ones (the merged decoder rebuilt from
	// the two decoders).
	Layout
	Encoder, Decoder, DecoderWithPast *graph.Model
	Config                            *Config

	// withPast maps each product of the fp32 decoder to its counterpart in
	// the decoder with past, by node name (canonicalize); nil for a QAT
	// directory, whose decoders already carry their quantizers.
	withPast map[string]string
}

// Graphs returns the three graphs with the names of their files.
func (d *Dir) Graphs() []NamedGraph {
	return []NamedGraph{{EncoderFile, d.Encoder}, {DecoderFile, d.Decoder}, {DecoderWithPastFile, d.DecoderWithPast}}
}

// Parts returns the three graphs with the names they go by in messages
// and reports: their files, or for a merged decoder its file and branch.
func (d *Dir) Parts() []NamedGraph {
	if d.Separate || !d.Merged {
		return d.Graphs()
	}
	return []NamedGraph{{EncoderFile, d.Encoder}, {MergedFile + " (no past)", d.Decoder}, {MergedFile + " (with past)", d.DecoderWithPast}}
}

// NamedGraph is one of a directory's graphs.
type NamedGraph struct {
	File  string
	Graph *graph.Model
}

// ReadDir reads directory path (see Stat) and its config, splits a merged
// decoder into its two branches, and checks that the files make one model
// in Optimum's layout: the inputs and outputs each file needs, one export
// id where qatc wrote them (see MetadataKey), and the same sizes.
func ReadDir(path string) (*Dir, error) {
	lay, err := Stat(path)
	if err != nil {
		return nil, err
	}
	cfg, err := ReadConfig(path)
	if err != nil {
		return nil, err
	}
	d := &Dir{Layout: *lay, Config: cfg}
	if d.Encoder, err = graph.LoadValid(lay.Path(EncoderFile)); err != nil {
		return nil, err
	}
	if lay.Separate {
		if d.Decoder, err = graph.LoadValid(lay.Path(DecoderFile)); err != nil {
			return nil, err
		}
		if d.DecoderWithPast, err = graph.LoadValid(lay.Path(DecoderWithPastFile)); err != nil {
			return nil, err
		}
	} else {
		merged, err := graph.LoadValid(lay.Path(MergedFile))
		if err != nil {
			return nil, err
		}
		if d.Decoder, d.DecoderWithPast, err = SplitMerged(merged, lay.Path(MergedFile)); err != nil {
			return nil, err
		}
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	if err := d.canonicalize(); err != nil {
		return nil, err
	}
	return d, nil
}

// check verifies the files' inputs and outputs and their export ids.
func (d *Dir) check() error {
	first, next := d.DecoderFiles()
	files := map[*graph.Model]string{d.Encoder: d.Path(EncoderFile), d.Decoder: d.Path(first), d.DecoderWithPast: d.Path(next)}
	if !d.Separate {
		files[d.Decoder] = d.Path(MergedFile) + " (its branch without past)"
		files[d.DecoderWithPast] = d.Path(MergedFile) + " (its branch with past)"
	}
	// cache is the element type of a cache tensor: float, or 8-bit
	// integers (an integer cache, qatc's integer formats), the same in
	// every file.
	cache := map[string]graph.DataType{}
	cacheType := func(m *graph.Model, output bool, name, present string) graph.DataType {
		if t, ok := cache[present]; ok {
			return t
		}
		v := m.Input(name)
		if output {
			v = m.Output(name)
		}
		t := graph.Float
		if tt := v.GetType().GetTensorType(); tt != nil && (graph.DataType(tt.ElemType) == graph.Int8 || graph.DataType(tt.ElemType) == graph.Uint8) {
			t = graph.DataType(tt.ElemType)
		}
		cache[present] = t
		return t
	}
	need := func(m *graph.Model, output bool, name string, elem graph.DataType, rank int) error {
		var v *onnx.ValueInfoProto
		kind := "input"
		if output {
			v, kind = m.Output(name), "output"
		} else if v = m.Input(name); v != nil && m.Initializer(name) != nil {
			v = nil
		}
		if v == nil {
			return fmt.Errorf("%s has no %s %s: not a seq2seq model file in Optimum's layout", files[m], kind, name)
		}
		tt := v.GetType().GetTensorType()
		if tt == nil || graph.DataType(tt.ElemType) != elem || tt.Shape != nil && len(tt.Shape.Dim) != rank {
			return fmt.Errorf("%s: %s %s is not %s of rank %d", files[m], kind, name, elem, rank)
		}
		return nil
	}
	checks := []struct {
		m      *graph.Model
		output bool
		name   string
		elem   graph.DataType
		rank   int
	}{
		{d.Encoder, false, InputIDs, graph.Int64, 2},
		{d.Encoder, false, AttentionMask, graph.Int64, 2},
		{d.Encoder, true, LastHiddenState, graph.Float, 3},
		{d.Decoder, false, InputIDs, graph.Int64, 2},
		{d.Decoder, false, EncoderAttentionMask, graph.Int64, 2},
		{d.Decoder, false, EncoderHiddenStates, graph.Float, 3},
		{d.Decoder, true, Logits, graph.Float, 3},
		{d.DecoderWithPast, false, InputIDs, graph.Int64, 2},
		{d.DecoderWithPast, false, EncoderAttentionMask, graph.Int64, 2},
		{d.DecoderWithPast, true, Logits, graph.Float, 3},
	}
	for _, c := range checks {
		if err := need(c.m, c.output, c.name, c.elem, c.rank); err != nil {
			return err
		}
	}
	for l := range d.Config.DecoderLayers {
		for _, kv := range []string{"key", "value"} {
			for _, st := range []string{"decoder", "encoder"} {
				p := Present(l, st, kv)
				if err := need(d.Decoder, true, p, cacheType(d.Decoder, true, p, p), 4); err != nil {
					return err
				}
				if err := need(d.DecoderWithPast, false, Past(l, st, kv), cache[p], 4); err != nil {
					return err
				}
			}
			p := Present(l, "decoder", kv)
			if err := need(d.DecoderWithPast, true, p, cache[p], 4); err != nil {
				return err
			}
		}
	}
	for _, m := range []*graph.Model{d.Decoder, d.DecoderWithPast} {
		for _, v := range m.Graph().Input {
			var layer int
			if _, err := fmt.Sscanf(v.Name, "past_key_values.%d.", &layer); err == nil && layer >= d.Config.DecoderLayers {
				return fmt.Errorf("%s has a cache input for layer %d; %s says %d decoder layers: the files come from different models", files[m], layer, d.Path(ConfigFile), d.Config.DecoderLayers)
			}
		}
	}
	// The widths the encoder writes and the decoder reads.
	if w, v := lastDim(d.Encoder.Output(LastHiddenState)), lastDim(d.Decoder.Input(EncoderHiddenStates)); w > 0 && v > 0 && w != v {
		return fmt.Errorf("%s writes states of width %d but %s reads width %d: the files come from different models", files[d.Encoder], w, files[d.Decoder], v)
	}
	for _, m := range []*graph.Model{d.Decoder, d.DecoderWithPast} {
		if v := lastDim(m.Output(Logits)); v > 0 && v != int64(d.Config.Vocab) {
			return fmt.Errorf("%s has a vocabulary of %d where %s says %d: the files come from different models", files[m], v, d.Path(ConfigFile), d.Config.Vocab)
		}
	}
	if id := d.Config.Qatc.ID; id != "" {
		for _, m := range []*graph.Model{d.Encoder, d.Decoder, d.DecoderWithPast} {
			s, ok := m.Metadata(MetadataKey)
			if !ok {
				continue
			}
			var p Part
			if json.Unmarshal([]byte(s), &p) != nil || p.ID != id {
				return fmt.Errorf("%s comes from another export than %s (export id %q, config %q): the directory mixes files of different models; write it again", files[m], d.Path(ConfigFile), p.ID, id)
			}
		}
	}
	return nil
}

// lastDim returns the static last dim of v (0 when unknown).
func lastDim(v *onnx.ValueInfoProto) int64 {
	tt := v.GetType().GetTensorType()
	if tt == nil || tt.Shape == nil || len(tt.Shape.Dim) == 0 {
		return 0
	}
	return tt.Shape.Dim[len(tt.Shape.Dim)-1].GetDimValue()
}

// Write writes the directory to path: the encoder, the decoders as the
// layout has them (separate, merged or both), config.json with a new
// export id that every file's metadata repeats, and the regular files of
// the directory it was read from that are not models (tokenizer files,
// generation config). The files go to a new directory beside path, which
// then takes path's place, so that path never holds a partial model; an
// existing path is replaced only when qatc wrote it (CheckOutput).
func (d *Dir) Write(path string) error {
	path = filepath.Clean(path)
	if err := CheckOutput(path); err != nil {
		return err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	cfg := *d.Config
	cfg.Qatc.ID = hex.EncodeToString(id)
	files := []NamedGraph{{EncoderFile, d.Encoder}}
	if d.Separate || !d.Merged {
		files = append(files, NamedGraph{DecoderFile, d.Decoder}, NamedGraph{DecoderWithPastFile, d.DecoderWithPast})
	}
	if d.Merged {
		m, err := MergeDecoders(d.Decoder, d.DecoderWithPast)
		if err != nil {
			return err
		}
		files = append(files, NamedGraph{MergedFile, m})
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	var b safeio.Batch
	defer b.Abort()
	tmp, err := b.CreateDir(path)
	if err != nil {
		return err
	}
	for _, f := range files {
		part, err := json.Marshal(Part{ID: cfg.Qatc.ID, File: f.File})
		if err != nil {
			return err
		}
		old, had := f.Graph.Metadata(MetadataKey)
		f.Graph.SetMetadata(MetadataKey, string(part))
		err = f.Graph.Save(filepath.Join(tmp, f.File))
		if had {
			f.Graph.SetMetadata(MetadataKey, old)
		}
		if err != nil {
			return err
		}
	}
	data, err := cfg.Marshal()
	if err != nil {
		return err
	}
	if err := safeio.WriteFile(filepath.Join(tmp, ConfigFile), data); err != nil {
		return err
	}
	if d.Dir != "" && filepath.Clean(d.Dir) != path {
		if err := copyCompanions(d.Dir, tmp); err != nil {
			return err
		}
	}
	if err := b.Commit(); err != nil {
		return err
	}
	d.Config.Qatc.ID = cfg.Qatc.ID
	return nil
}

// companion reports whether a file of a model directory travels with the
// model: a regular file that is none of the layout's models, their data
// or the config.
func companion(e os.DirEntry) bool {
	n := e.Name()
	if !e.Type().IsRegular() || n == ConfigFile || strings.HasSuffix(n, ".onnx") || strings.HasSuffix(n, ".onnx.data") || strings.HasSuffix(n, ".onnx_data") || strings.HasPrefix(n, ".") {
		return false
	}
	return true
}

// copyCompanions copies src's companion files into dst.
func copyCompanions(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !companion(e) {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// CheckOutput checks, before any work, that path can take a model
// directory: it does not exist, is empty, or holds a directory qatc wrote
// (its config.json carries an export id) and only the layout's files
// beside the companions copied with them.
func CheckOutput(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("-o %s: a file of that name exists; a seq2seq model is written as a directory", path)
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return nil
	}
	cfg, err := ReadConfig(path)
	if err != nil || cfg.Qatc.ID == "" {
		why := "its config.json carries no qatc export id"
		if err != nil {
			why = fmt.Sprintf("it holds %s and no config.json qatc wrote", entries[0].Name())
		}
		return fmt.Errorf("-o %s: the directory exists and was not written by qatc (%s); choose another directory", path, why)
	}
	for _, e := range entries {
		if e.IsDir() {
			return fmt.Errorf("-o %s: the directory exists and holds the directory %s, which qatc does not write; choose another directory", path, e.Name())
		}
	}
	return nil
}
