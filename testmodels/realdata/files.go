package realdata

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Stats counts what Build kept and dropped.
type Stats struct {
	Catalogs, Messages, Cleaned, Unique int
	Train, Valid, Test                  int
}

// FindCatalogs lists the .mo files under root whose directory is
// LANG/LC_MESSAGES, sorted, so that the corpus does not depend on the order
// the file system lists them in.
func FindCatalogs(root, lang string) ([]string, error) {
	var paths []string
	suffix := string(filepath.Separator) + filepath.Join(lang, "LC_MESSAGES")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".mo") && strings.HasSuffix(filepath.Dir(p), suffix) {
			paths = append(paths, p)
		}
		return nil
	})
	slices.Sort(paths)
	return paths, err
}

// Build reads the catalogs, cleans and de-duplicates their messages, splits
// them and writes DIR/{train,valid,test}.{en,TGT}.
func Build(catalogs []string, tgt, dir string, f Filter, sz Sizes) (Stats, error) {
	st := Stats{Catalogs: len(catalogs)}
	var pairs []Pair
	for _, c := range catalogs {
		msgs, err := ReadMO(c)
		if err != nil {
			return st, err
		}
		st.Messages += len(msgs)
		for _, m := range msgs {
			if p, ok := f.Clean(m); ok {
				pairs = append(pairs, p)
			}
		}
	}
	st.Cleaned = len(pairs)
	pairs = Dedup(pairs)
	st.Unique = len(pairs)
	train, valid, test := Split(pairs, sz)
	st.Train, st.Valid, st.Test = len(train), len(valid), len(test)
	if len(test) < sz.Test || len(valid) < sz.Valid {
		return st, fmt.Errorf("only %d pairs eligible for valid+test (want %d): give more catalogs", len(valid)+len(test), sz.Valid+sz.Test)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return st, err
	}
	for _, s := range []struct {
		name  string
		pairs []Pair
	}{{"train", train}, {"valid", valid}, {"test", test}} {
		var src, dst strings.Builder
		for _, p := range s.pairs {
			src.WriteString(p.Src + "\n")
			dst.WriteString(p.Tgt + "\n")
		}
		for ext, text := range map[string]string{"en": src.String(), tgt: dst.String()} {
			path := filepath.Join(dir, s.name+"."+ext)
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				return st, fmt.Errorf("write %s: %w", path, err)
			}
		}
	}
	return st, nil
}
