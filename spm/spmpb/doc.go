// Package spmpb holds the Go types of SentencePiece's model file,
// generated from sentencepiece_model.proto (see that file for how).
package spmpb
