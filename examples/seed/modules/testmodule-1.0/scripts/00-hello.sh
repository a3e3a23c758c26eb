#!/bin/bash

echo "Hello, disco"
