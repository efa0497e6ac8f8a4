package seq2seq

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/qatc/qatc/graph"
)

// Layout is what a directory holds: which model files, before any is read.
type Layout struct {
	Dir string
	// Separate is true when decoder_model.onnx and
	// decoder_with_past_model.onnx are both there; Merged when
	// decoder_model_merged.onnx is. Optimum writes either or both.
	Separate, Merged bool
}

// Path returns the path of one of the directory's files.
func (l *Layout) Path(file string) string { return filepath.Join(l.Dir, file) }

// DecoderFiles returns the files the decoders are read from: the two
// separate ones when there, else the merged one twice.
func (l *Layout) DecoderFiles() (first, withPast string) {
	if l.Separate {
		return DecoderFile, DecoderWithPastFile
	}
	return MergedFile, MergedFile
}

// Files returns the model files the layout holds, encoder first.
func (l *Layout) Files() []string {
	fs := []string{EncoderFile}
	if l.Separate {
		fs = append(fs, DecoderFile, DecoderWithPastFile)
	}
	if l.Merged {
		fs = append(fs, MergedFile)
	}
	return fs
}

// Stat reads which of the layout's files directory dir holds and checks
// that they make a model decodable with its cache: the encoder, and the
// two decoders or the merged one. It reads no model.
func Stat(dir string) (*Layout, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	has := func(f string) (bool, error) {
		st, err := os.Stat(filepath.Join(dir, f))
		switch {
		case errors.Is(err, os.ErrNotExist):
			return false, nil
		case err != nil:
			return false, err
		case st.IsDir():
			return false, fmt.Errorf("%s is a directory, not an ONNX file", filepath.Join(dir, f))
		}
		return true, nil
	}
	found := map[string]bool{}
	for _, f := range []string{EncoderFile, DecoderFile, DecoderWithPastFile, MergedFile} {
		ok, err := has(f)
		if err != nil {
			return nil, err
		}
		found[f] = ok
	}
	l := &Layout{Dir: dir, Separate: found[DecoderFile] && found[DecoderWithPastFile], Merged: found[MergedFile]}
	switch {
	case !found[EncoderFile] && !found[DecoderFile] && !found[DecoderWithPastFile] && !found[MergedFile]:
		return nil, fmt.Errorf("%s holds none of %s, %s, %s, %s: not a seq2seq model directory (Optimum's layout, or qatc export --incremental)", dir, EncoderFile, DecoderFile, DecoderWithPastFile, MergedFile)
	case !found[EncoderFile]:
		return nil, fmt.Errorf("%s: %s is missing: a seq2seq directory needs its encoder beside the decoders; copy it from the export the decoders come from", dir, EncoderFile)
	case !l.Separate && !l.Merged && found[DecoderFile]:
		return nil, fmt.Errorf("%s: %s is missing, and there is no %s: decoding needs the decoder with a key/value cache; export the model with past key values (optimum-cli export onnx --task text2text-generation-with-past)", dir, DecoderWithPastFile, MergedFile)
	case !l.Separate && !l.Merged:
		return nil, fmt.Errorf("%s: %s is missing, and there is no %s: the decoder with a cache needs the first-step decoder beside it", dir, DecoderFile, MergedFile)
	}
	return l, nil
}

// InputFiles lists the model files of directory dir that exist, with
// their external-data files: what a command reading the directory reads.
func InputFiles(dir string) []string {
	var out []string
	for _, f := range []string{EncoderFile, DecoderFile, DecoderWithPastFile, MergedFile} {
		p := filepath.Join(dir, f)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		out = append(out, p)
		if data, err := graph.DataFiles(p); err == nil {
			out = append(out, data...)
		}
	}
	return out
}
