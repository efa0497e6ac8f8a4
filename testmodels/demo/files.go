package demo

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteSplits writes every split as dir/NAME.src and dir/NAME.tgt.
func WriteSplits(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, s := range Splits {
		pairs := Generate(s.Seed, s.Size)
		var src, tgt strings.Builder
		for _, p := range pairs {
			src.WriteString(p.Src + "\n")
			tgt.WriteString(p.Tgt + "\n")
		}
		for ext, text := range map[string]string{"src": src.String(), "tgt": tgt.String()} {
			path := filepath.Join(dir, s.Name+"."+ext)
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
		}
	}
	return nil
}
