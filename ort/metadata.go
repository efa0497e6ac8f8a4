package ort

import "fmt"

// Metadata returns the value the model's metadata_props hold under key,
// as onnxruntime read it; ok is false when the key is absent.
func (s *Session) Metadata(key string) (value string, ok bool, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.sess == nil {
		return "", false, fmt.Errorf("%s: Metadata on a closed session", s.name)
	}
	md, err := s.sess.GetModelMetadata()
	if err != nil {
		return "", false, fmt.Errorf("%s: onnxruntime: %s", s.name, ortMessage(err))
	}
	defer md.Destroy()
	value, ok, err = md.LookupCustomMetadataMap(key)
	if err != nil {
		return "", false, fmt.Errorf("%s: onnxruntime: %s", s.name, ortMessage(err))
	}
	return value, ok, nil
}
