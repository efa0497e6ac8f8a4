package safeio

import "fmt"

// FormatSize writes a size in bytes with a binary unit and the given number
// of decimals, as in "1.5 MiB" (decimals 1); sizes under 1 KiB are whole
// bytes. Every report that prints a file's or a model's size uses it, so
// the units read alike across commands.
func FormatSize(n int64, decimals int) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n) / unit
	units := "KMGTPE"
	i := 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.*f %ciB", decimals, v, units[i])
}
