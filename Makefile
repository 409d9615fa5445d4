# Thin aliases over tasks.py, which needs only python3.
.PHONY: demo test check bench package
demo:
	python3 tasks.py demo
test:
	python3 tasks.py test
check:
	python3 tasks.py check
bench:
	python3 tasks.py bench
package:
	python3 tasks.py package
