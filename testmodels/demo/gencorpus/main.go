// Command gencorpus writes the demo corpus's splits as text files,
// DIR/{train,valid,test}.{src,tgt}, one sentence per line.
//
//	go run ./testmodels/demo/gencorpus -o DIR
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/qatc/qatc/testmodels/demo"
)

func main() {
	out := flag.String("o", "demo-data", "output directory")
	flag.Parse()
	if err := demo.WriteSplits(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gencorpus:", err)
		os.Exit(1)
	}
}
